"""Exported assets as the standard tools open them (issue 29): the up axis of every file, the
glb's normals and vertex colours, the Khronos glTF validator on a glb of each representation, a
4D run as one animated glb, and normal maps from the representations' own geometry."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh

from tests import browser
from tests.helpers import REPO
from tests.test_export_mesh import BG, painted_sphere_mesh, two_tone_cube_nerf
from threedgen import config as C
from threedgen.cameras import make_cameras
from threedgen.export.axes import rotation, to_file
from threedgen.export.formats import ExportConfig, Job
from threedgen.export.gltf import read_glb, srgb_to_linear
from threedgen.export.mesh import textured_mesh, write_glb, write_obj, write_ply
from threedgen.export.splat import read_splat_ply, write_splat_ply
from threedgen.export.views import view_cameras, write_view_set
from threedgen.registry import FORMATS
from threedgen.representations.dynamic_gaussians import DynamicGaussians
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.mesh import Mesh
from threedgen.representations.triplane import Triplane

GLTF_VALIDATOR = "gltf-validator@2.0.0-dev.3.10"


def cone_mesh() -> Mesh:
    """A mesh representation holding an upright cone (apex at z = +0.5, base radius 0.3 at z = -0.5)."""
    cone = trimesh.creation.cone(radius=0.3, height=1.0, sections=48)
    cone.apply_translation([0, 0, -0.5])
    return Mesh.from_mesh(torch.tensor(cone.vertices, dtype=torch.float32), torch.tensor(cone.faces),
                          Mesh.Config(texture_resolution=8)).eval()


def triplane_blob() -> Triplane:
    return Triplane.from_config(Triplane.Config()).eval()


def load(path) -> trimesh.Trimesh:
    return trimesh.load(path, force="mesh", process=False)


def load_with_normals(path) -> trimesh.Trimesh:
    """The default scene's mesh with the file's own normals (``force="mesh"`` recomputes them)."""
    scene = trimesh.load(path, process=False)
    if isinstance(scene, trimesh.Trimesh):
        return scene
    (name,) = {scene.graph[node][1] for node in scene.graph.nodes_geometry}
    return scene.geometry[name]


# ---------------------------------------------------------------------- axes
def test_cone_files_stand_up_along_y(tmp_path):
    """glb, obj and ply of an upright cone load in trimesh tallest along +y, apex up."""
    m = textured_mesh(cone_mesh(), texture_size=64)
    paths = [write_glb(m, tmp_path / "cone.glb")[0], write_obj(m, tmp_path / "obj")[0],
             write_ply(m, tmp_path / "cone.ply")[0]]
    for path in paths:
        v = np.asarray(load(path).vertices)
        assert np.argmax(np.ptp(v, 0)) == 1, (path, np.ptp(v, 0))
        top, bottom = v[v[:, 1] > v[:, 1].max() - 0.05], v[v[:, 1] < v[:, 1].min() + 0.05]
        radius = lambda p: np.hypot(p[:, 0], p[:, 2]).max()  # noqa: E731
        assert radius(top) < 0.05 < 0.25 < radius(bottom), (path, radius(top), radius(bottom))  # the apex is up
    np.testing.assert_allclose(load(paths[0]).vertices, to_file(m.verts, "y"), atol=1e-6)


def job_with(cfg, rep, out: Path, opts: ExportConfig, meshes: dict) -> Job:
    """An export Job whose textured meshes are given (built once for several tests or options,
    without the fidelity renders ``Job.meshes`` adds for mesh.json)."""
    out.mkdir(exist_ok=True)
    job = Job(cfg, rep, out, opts)
    job.__dict__["meshes"] = meshes  # Job.meshes is a cached_property
    return job


def test_export_up_option_overrides_the_axis(tmp_path):
    cfg = C.load([REPO / "configs" / "mesh-sds.yaml"], ["prompt=a red cone"])
    cone = cone_mesh()
    m = textured_mesh(cone, texture_size=32)
    for up, axis in [(None, 1), ("z", 2), ("y", 1)]:
        out = tmp_path / str(up)
        FORMATS["glb"](job_with(cfg, cone, out, ExportConfig(texture_size=32, up=up), {"": m}))
        v = np.asarray(load(out / "mesh.glb").vertices)
        assert np.argmax(np.ptp(v, 0)) == axis and v[:, axis].max() > 0.49, (up, np.ptp(v, 0))


def test_splat_file_is_minus_y_up_and_turns_every_gaussian_with_it(tmp_path):
    """The default splat file is -y up (SuperSplat's and the 3DGS viewers' convention): a tall
    Gaussian cloud is tallest along y, its top at -y; each Gaussian's covariance and
    view-dependent colour turn with it; the file reloads exactly, and a copy without the exact
    td_* columns (as another tool would save it) reloads to float precision."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci, _spherical_harmonics

    g = Gaussians.from_random_ball(200, seed=4, sh_degree=2)
    with torch.no_grad():
        g.params["means"].mul_(torch.tensor([0.3, 0.3, 1.0]))  # tall along world z
        g.params["means"][0] = torch.tensor([0.0, 0.0, 0.9])  # the top
        for k in ("quats", "scales", "colors"):
            g.params[k].add_(0.3 * torch.randn_like(g.params[k]))
    write_splat_ply(g, tmp_path / "s.ply")
    raw = (tmp_path / "s.ply").read_bytes()
    header, body = raw.split(b"end_header\n")
    assert b"comment threedgen_up -y" in header
    names = [line.split()[2].decode() for line in header.splitlines() if line.startswith(b"property")]
    table = np.frombuffer(body, "<f4").reshape(200, len(names))
    col = lambda *n: torch.from_numpy(table[:, [names.index(x) for x in n]].copy())  # noqa: E731
    xyz = col("x", "y", "z").numpy()
    assert np.argmax(np.ptp(xyz, 0)) == 1 and np.argmin(xyz[:, 1]) == 0
    R = torch.from_numpy(rotation("-y"))
    cov = lambda q, s: _quat_scale_to_covar_preci(q, s, compute_preci=False)[0]  # noqa: E731
    torch.testing.assert_close(cov(col("rot_0", "rot_1", "rot_2", "rot_3"), g.scales),
                               R @ cov(g.quats, g.scales) @ R.T, atol=1e-5, rtol=1e-4)
    rest = col(*[n for n in names if n.startswith("f_rest_")]).reshape(200, 3, -1).transpose(1, 2)
    sh = torch.cat([col("f_dc_0", "f_dc_1", "f_dc_2")[:, None], rest], 1)
    d = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)  # a direction per Gaussian
    torch.testing.assert_close(_spherical_harmonics(2, d @ R.T, sh), _spherical_harmonics(2, d, g.colors), atol=1e-5, rtol=1e-4)
    back = read_splat_ply(tmp_path / "s.ply")
    assert all(torch.equal(back.params[k], v) for k, v in g.params.items())
    keep = [i for i, n in enumerate(names) if not n.startswith("td_")]
    foreign = b"\n".join(line for line in header.splitlines() if b"td_" not in line) + b"\nend_header\n"
    (tmp_path / "f.ply").write_bytes(foreign + np.ascontiguousarray(table[:, keep]).tobytes())
    other = read_splat_ply(tmp_path / "f.ply")
    for k, v in g.params.items():
        torch.testing.assert_close(other.params[k], v, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- normals and colours
@pytest.fixture(scope="module")
def sphere(tmp_path_factory) -> tuple[object, Path]:
    """A mesh run's sphere as a TexturedMesh and its glb."""
    m = textured_mesh(painted_sphere_mesh(), texture_size=64)
    return m, write_glb(m, tmp_path_factory.mktemp("sphere") / "mesh.glb")[0]


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> tuple[object, Path]:
    """A NeRF's two-tone cube (red below, blue above) as a TexturedMesh and the folder of its
    glb and obj."""
    m = textured_mesh(two_tone_cube_nerf(), grid=40, texture_size=64)
    folder = tmp_path_factory.mktemp("cube")
    write_glb(m, folder / "mesh.glb")
    write_obj(m, folder / "obj")
    return m, folder


def test_glb_normals_are_smooth_unit_and_outward(sphere):
    """On a sphere the glb's NORMAL is unit, outward and close to the radial direction, and the
    copies of a vertex on either side of a texture seam share one normal."""
    m, path = sphere
    mesh = load_with_normals(path)
    v, n = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    assert n.shape == v.shape and len(v) == len(m.verts)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    cos = (n * v / np.linalg.norm(v, axis=1, keepdims=True)).sum(1)
    assert cos.min() > 0.98, cos.min()
    _, first, inverse = np.unique(v.round(6), axis=0, return_index=True, return_inverse=True)
    assert len(first) < len(v)  # the atlas split vertices at its seams
    np.testing.assert_allclose(n, n[first][inverse.reshape(-1)], atol=1e-6)  # one normal per position


def test_isosurface_normals_point_outward(cube):
    for path in (cube[1] / "mesh.glb", cube[1] / "obj" / "mesh.obj"):
        mesh = load_with_normals(path)
        assert ((mesh.vertex_normals * mesh.vertices).sum(1) > 0).all(), path


def test_glb_vertex_colours_sit_in_a_second_scene(cube):
    """COLOR_0 multiplies a primitive's base colour, so the default scene's textured primitive has
    none; scene 1 draws the same triangles with COLOR_0 = the vertex colours, linear."""
    m, folder = cube
    tree, blob = read_glb((folder / "mesh.glb").read_bytes())
    assert tree["scene"] == 0 and len(tree["scenes"]) == 2 and tree["scenes"][1]["name"] == "vertex colours"
    (textured,) = [tree["meshes"][tree["nodes"][i]["mesh"]]["primitives"][0] for i in tree["scenes"][0]["nodes"]]
    (coloured,) = [tree["meshes"][tree["nodes"][i]["mesh"]]["primitives"][0] for i in tree["scenes"][1]["nodes"]]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(textured["attributes"]) and "COLOR_0" not in textured["attributes"]
    assert coloured["attributes"]["POSITION"] == textured["attributes"]["POSITION"]
    assert coloured["indices"] == textured["indices"] and "baseColorTexture" not in str(tree["materials"][coloured["material"]])
    acc = tree["accessors"][coloured["attributes"]["COLOR_0"]]
    view = tree["bufferViews"][acc["bufferView"]]
    colours = np.frombuffer(blob, "<f4", acc["count"] * 3, view["byteOffset"]).reshape(-1, 3)
    np.testing.assert_allclose(colours, srgb_to_linear(m.vertex_colors / 255), atol=1e-6)
    assert m.vertex_colors[:, 0].mean() > 100 and m.vertex_colors[:, 2].mean() > 100  # red and blue halves
    # trimesh (like three.js) loads the default scene: the textured mesh alone
    assert len(load(folder / "mesh.glb").vertices) == len(m.verts)


# ---------------------------------------------------------------------- 4D
def bouncing_shell(amplitude: float = 0.3) -> DynamicGaussians:
    """2500 opaque Gaussians on a sphere of radius 0.5 moved up by amplitude * sin(pi t) (root motion)."""
    s = Gaussians.from_sphere(2500, radius=0.5, color=(0.9, 0.2, 0.1), seed=0)
    p = {k: v.detach() for k, v in s.params.items()}
    p["opacities"], p["scales"] = torch.full_like(p["opacities"], 4.0), p["scales"] + 0.7
    cfg = DynamicGaussians.Config(deform_position=False, deform_rotation=False, deform_scale=False)
    g = DynamicGaussians(p["means"], p["scales"], p["quats"], p["opacities"], p["colors"], cfg=cfg)
    with torch.no_grad():
        g.root.weight[5, 1] = amplitude  # translation z from the feature sin(pi t)
    return g.eval()


@pytest.fixture(scope="module")
def animated(tmp_path_factory) -> Path:
    """The glb export of a 4D run (a ball bouncing) at 3 times: its folder."""
    cfg = C.load([REPO / "configs" / "4d-gaussians-sds.yaml"], ["prompt=a red ball bouncing"])
    rep, opts = bouncing_shell(), ExportConfig(times=3, grid=32, texture_size=32, frames=12, fps=12)
    job = Job(cfg, rep, tmp_path_factory.mktemp("4d"), opts)
    meshes = {suffix: textured_mesh(frame, grid=32, texture_size=32) for suffix, _, frame in job.frames}
    FORMATS["glb"](job_with(cfg, rep, job.out, opts, meshes))
    return job.out


def test_4d_glb_plays_its_frames(animated):
    """One mesh.glb holds every frame; an animation with STEP keyframes shows one at a time, and
    the box at two times differs as the object moves; the per-frame files stay."""
    assert [(animated / f"mesh_{k:03d}.glb").is_file() for k in range(3)] == [True] * 3
    tree, blob = read_glb((animated / "mesh.glb").read_bytes())
    frames, coloured = tree["animations"]
    assert frames["name"] == "frames" and len(frames["channels"]) == 3
    nodes = [c["target"]["node"] for c in frames["channels"]]
    assert sorted(nodes) == sorted(tree["scenes"][0]["nodes"]) and {c["target"]["path"] for c in frames["channels"]} == {"scale"}

    def floats(index, width):
        acc = tree["accessors"][index]
        return np.frombuffer(blob, "<f4", acc["count"] * width, tree["bufferViews"][acc["bufferView"]]["byteOffset"]).reshape(acc["count"], width)

    times = floats(frames["samplers"][0]["input"], 1)[:, 0]
    np.testing.assert_allclose(times, np.arange(4) * 12 / 12 / 3)  # 3 frames + the end of the last one
    shown = np.stack([floats(s["output"], 3)[:, 0] for s in frames["samplers"]])  # [node, keyframe]
    assert all(s["interpolation"] == "STEP" for s in frames["samplers"])
    np.testing.assert_array_equal(shown[:, :3], np.eye(3))  # keyframe k shows frame k alone

    def box_at(t):
        k = int(np.searchsorted(times, t, side="right")) - 1
        node = nodes[int(np.argmax(shown[:, k]))]
        acc = tree["accessors"][tree["meshes"][tree["nodes"][node]["mesh"]]["primitives"][0]["attributes"]["POSITION"]]
        return np.array([acc["min"], acc["max"]])

    a, b = box_at(0.1), box_at(0.5)
    assert b[1, 1] - a[1, 1] > 0.1, (a, b)  # bounced up (+y in the file) by 0.3 sin(pi / 3)
    assert len(coloured["channels"]) == 3 and coloured["channels"][0]["target"]["node"] in tree["scenes"][1]["nodes"]


def test_4d_glb_plays_in_three_js(animated, tmp_path):
    """The report's viewer (three.js's GLTFLoader and AnimationMixer, in headless Chromium) loads
    the animated glb with no console error, finds its animation, and its Box3 at two times of
    the animation differs as the object moves."""
    browser.chromium_or_skip()
    shutil.copy(REPO / "threedgen" / "report" / "static" / "viewer.min.js", tmp_path)
    glb = base64.b64encode((animated / "mesh.glb").read_bytes()).decode()
    (tmp_path / "glb.js").write_text(f'window.THREEDGEN_GLB = "{glb}";\n')
    page = tmp_path / "page.html"
    page.write_text('<!doctype html><meta charset="utf-8"><div id="viewer" style="width:320px;height:240px">'
                    '</div><script src="glb.js"></script><script src="viewer.min.js"></script>\n')
    driver = browser.open_browser()
    try:
        driver.get(page.as_uri())
        browser.wait_for(driver, "window.__viewer && (window.__viewer.ready || window.__viewer.error)", 90, "the 3D view")
        seen = driver.execute_script("return {error: __viewer.error, animations: __viewer.animations, duration: "
                                     "__viewer.duration, early: __viewer.bboxAt(0.1), late: __viewer.bboxAt(0.5)};")
        console = browser.console_messages(driver)
    finally:
        driver.quit()
    assert seen["error"] is None and not [m for m in console if m["level"] == "SEVERE"], (seen["error"], console)
    assert seen["animations"] == 2 and seen["duration"] == pytest.approx(1.0)  # 3 frames + the last one's end, 12 fps
    assert seen["late"]["max"][1] - seen["early"]["max"][1] > 0.1, seen  # the ball bounced up (+y)


# ---------------------------------------------------------------------- the Khronos validator
@pytest.fixture(scope="session")
def gltf_validator(tmp_path_factory) -> Path:
    """The Khronos glTF-Validator (npm ``gltf-validator``) in a cache folder; installed once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("THREEDGEN_VALIDATOR_TESTS") == "required":  # CI: a missing node fails
            pytest.fail("node and npm are needed to run the Khronos glTF validator (npm gltf-validator)")
        pytest.skip("node and npm are needed to run the Khronos glTF validator (npm gltf-validator)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "threedgen-test" / GLTF_VALIDATOR
    if not (cache / "node_modules" / "gltf-validator").is_dir():
        staging = tmp_path_factory.mktemp("npm")
        result = subprocess.run(["npm", "install", "--prefix", str(staging), "--no-audit", "--no-fund", GLTF_VALIDATOR],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"npm install {GLTF_VALIDATOR} failed: {result.stderr[-2000:]}"
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(cache)
        except OSError:  # another worker installed it meanwhile
            assert (cache / "node_modules" / "gltf-validator").is_dir()
    return cache


def validate(validator: Path, paths: list[Path]) -> dict[str, dict]:
    """The validator's report (numErrors, numWarnings, messages) of each file."""
    script = ("const v = require('gltf-validator'), fs = require('fs');"
              "Promise.all(process.argv.slice(1).map(p => v.validateBytes(new Uint8Array(fs.readFileSync(p)))))"
              ".then(r => console.log(JSON.stringify(r.map(x => x.issues))))")
    out = subprocess.run(["node", "-e", script, *map(str, paths)], capture_output=True, text=True,
                         env={**os.environ, "NODE_PATH": str(validator / "node_modules")})
    assert out.returncode == 0, out.stderr
    return dict(zip(map(str, paths), json.loads(out.stdout)))


def test_khronos_validator_finds_nothing_in_any_glb(tmp_path, gltf_validator, cube, sphere, animated):
    """A glb of each representation (NeRF, Gaussians: a 4D run's first frame, mesh, triplane)
    and a 4D run's animated glb: 0 errors and 0 warnings."""
    paths = {"nerf": cube[1] / "mesh.glb", "gaussians": animated / "mesh_000.glb", "mesh": sphere[1],
             "triplane": write_glb(textured_mesh(triplane_blob(), grid=32, texture_size=32), tmp_path / "t.glb")[0],
             "4d": animated / "mesh.glb"}
    reports = validate(gltf_validator, list(paths.values()))
    for name, path in paths.items():
        r = reports[str(path)]
        assert (r["numErrors"], r["numWarnings"]) == (0, 0), (name, r["messages"][:5])
    print({name: {k: reports[str(p)][k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")}
           for name, p in paths.items()})


# ---------------------------------------------------------------------- normal maps
def face_on_cube_normals(rep) -> tuple[torch.Tensor, torch.Tensor]:
    """A view of the cube's +x face head on: (the representation's normals, normals from its
    depth), each at the pixels of the face's central part [P, 3]."""
    cams = make_cameras(0.0, 0.0, 2.8, 30.0, 96)
    out = rep.render_with_normals(cams, BG)
    origins, dirs = cams.rays()
    hit = origins[0] + dirs[0] * (2.8 - 0.4) / dirs[0, ..., 0:1].neg()  # where the ray meets x = 0.4
    centre = (hit[..., 1].abs() < 0.25) & (hit[..., 2].abs() < 0.25) & (out.alpha[0, 0] > 0.99)
    from_depth = cams.normals_at(out.depth)
    return out.normal[0].permute(1, 2, 0)[centre], from_depth[0].permute(1, 2, 0)[centre]


def gaussian_cube() -> Gaussians:
    """Small opaque Gaussians on the surface of a cube of half-size 0.4, jittered as a fit leaves them."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(12000, 3, generator=g) * 0.8 - 0.4
    face = torch.randint(0, 3, (12000,), generator=g)
    p[torch.arange(12000), face] = torch.where(torch.rand(12000, generator=g) < 0.5, -0.4, 0.4)
    p += 0.01 * torch.randn(12000, 3, generator=g)
    return Gaussians.from_points(p, torch.full((12000, 3), 0.6), scale=0.02, opacity=0.9).eval()


@pytest.mark.parametrize("name", ["nerf", "gaussians"])
def test_normal_maps_come_from_the_representation(name):
    """On a flat face the representation's normals agree with the face's normal, and spread
    less than normals differenced from depth one pixel apart: a NeRF's density gradient, and
    Gaussians' depth differenced across one pixel of their fit (fitted at 24^2, seen at 96^2)."""
    rep = two_tone_cube_nerf() if name == "nerf" else gaussian_cube()
    if name == "gaussians":
        rep.fit_resolution = 24
    normals, from_depth = face_on_cube_normals(rep)
    assert len(normals) > 300
    cos = normals @ torch.tensor([1.0, 0.0, 0.0])
    spread = lambda n: float((n - n.mean(0)).norm(dim=-1).mean().detach())  # noqa: E731
    assert cos.median() > 0.99 and cos.min() > 0.9, (cos.median(), cos.min())
    assert spread(normals) < spread(from_depth) or spread(from_depth) < 0.01, (spread(normals), spread(from_depth))
    print(name, "spread", round(spread(normals), 4), "from depth", round(spread(from_depth), 4))


def test_view_set_normal_maps_use_the_representation(tmp_path):
    """The view set's normal PNGs hold the representation's normals (a triplane's density gradient)."""
    rep = triplane_blob()
    cams = view_cameras((20.0,), 2, 2.8, 30.0, 48)
    write_view_set(rep, cams, tmp_path, BG)
    img = imageio.imread(tmp_path / "normals" / "000.png").astype(np.float32) / 255
    n = img[..., :3] * 2 - 1
    solid = img[..., 3] > 0.99
    with torch.no_grad():
        out = rep.render_with_normals(cams[:1], BG)
    expected = out.normal[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(n[solid], expected[solid], atol=1.5 / 255 * 2)
