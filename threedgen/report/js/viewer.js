// The report's 3D view: three.js with GLTFLoader and OrbitControls, bundled by esbuild into
// ../static/viewer.min.js (build.sh), one classic script that works from file:// (module
// scripts and fetch() do not). The glb comes as base64 in window.THREEDGEN_GLB (a <script> of
// its own, written beside the report), and is drawn into the element with id "viewer".
// window.__viewer exposes what a test reads: {ready, error, bbox, animations, duration, bboxAt(t),
// scene}; bbox = {min, max, size} of the loaded scene in glTF's frame (y up), from three's Box3;
// bboxAt(t) the same at time t of its animations; scene the loaded glTF scene.
import {
  AmbientLight, AnimationMixer, Box3, Color, DirectionalLight, PerspectiveCamera, Scene, Timer,
  Vector3, WebGLRenderer,
} from "three";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

const state = { ready: false, error: null, bbox: null, animations: 0, duration: 0, bboxAt: null, scene: null };
window.__viewer = state;

function fail(container, message) {
  state.error = message;
  container.textContent = "3D view unavailable: " + message;
  console.error("threedgen viewer: " + message);
}

function decode(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return bytes.buffer;
}

function boxOf(object) {
  object.updateMatrixWorld(true);
  const box = new Box3().setFromObject(object, true);
  const size = box.getSize(new Vector3());
  return { min: box.min.toArray(), max: box.max.toArray(), size: size.toArray() };
}

function frame(camera, controls, box) {
  const center = new Vector3().fromArray(box.min).add(new Vector3().fromArray(box.max)).multiplyScalar(0.5);
  const radius = Math.max(new Vector3().fromArray(box.size).length() / 2, 1e-3);
  const distance = radius / Math.sin((camera.fov * Math.PI) / 360);
  camera.position.copy(center).add(new Vector3(1, 0.6, 1).normalize().multiplyScalar(distance));
  camera.near = distance / 100;
  camera.far = distance * 100;
  camera.updateProjectionMatrix();
  controls.target.copy(center);
  controls.update();
}

function show(container, gltf) {
  const width = container.clientWidth || 480, height = container.clientHeight || 360;
  const renderer = new WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  renderer.setSize(width, height);
  container.replaceChildren(renderer.domElement);
  const scene = new Scene();
  scene.background = new Color(0xeeeeee);
  scene.add(new AmbientLight(0xffffff, 1.5));
  const sun = new DirectionalLight(0xffffff, 1.5);
  sun.position.set(1, 2, 1.5);
  scene.add(sun);
  scene.add(gltf.scene);
  state.scene = gltf.scene;
  const camera = new PerspectiveCamera(40, width / height, 0.01, 100);
  const controls = new OrbitControls(camera, renderer.domElement);
  const mixer = gltf.animations.length ? new AnimationMixer(gltf.scene) : null;
  if (mixer) gltf.animations.forEach((clip) => mixer.clipAction(clip).play());
  state.animations = gltf.animations.length;
  state.duration = Math.max(0, ...gltf.animations.map((clip) => clip.duration));
  state.bboxAt = (t) => {
    if (mixer) mixer.setTime(t);
    return boxOf(gltf.scene);
  };
  state.bbox = state.bboxAt(0);
  frame(camera, controls, state.bbox);
  const draw = () => renderer.render(scene, camera);
  if (mixer) {  // animated: play; still: draw when the view moves
    const timer = new Timer();
    renderer.setAnimationLoop((time) => {
      timer.update(time);
      mixer.update(timer.getDelta());
      draw();
    });
  } else {
    controls.addEventListener("change", draw);
  }
  draw();
  state.ready = true;
}

function start() {
  const container = document.getElementById("viewer");
  if (!container) return;
  if (!window.THREEDGEN_GLB) return fail(container, "no glb data (the report's glb script did not load)");
  try {
    new GLTFLoader().parse(decode(window.THREEDGEN_GLB), "", (gltf) => {
      try {
        show(container, gltf);
      } catch (e) {
        fail(container, String(e && e.message ? e.message : e));
      }
    }, (e) => fail(container, "the glb does not load: " + (e && e.message ? e.message : e)));
  } catch (e) {
    fail(container, String(e && e.message ? e.message : e));
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
