"""Binary glTF 2.0 (.glb) of textured meshes, as the Khronos validator and three.js read it.

trimesh writes the meshes (POSITION, NORMAL, TEXCOORD_0, indices), the textures and the
materials, already turned to the file's up axis (``export.axes``); this module adds what
trimesh does not write:

- **Vertex colours in a second scene.** glTF multiplies a primitive's COLOR_0 into its base
  colour (the spec: "a linear multiplier to baseColor"; three.js and Blender do so), so vertex
  colours beside a texture of the same colours would darken it. The default scene (0) holds the
  textured meshes; scene 1, "vertex colours", holds the same triangles (the same accessors) with
  COLOR_0 (linear, from the sRGB colours the renders show) under a plain white material.
- **Frames as one playable file** (a 4D run): one node per frame, each frame's own mesh (an
  isosurface per time has its own topology, so morph targets cannot hold them), switched by an
  animation with STEP interpolation on the nodes' scale: frame k is scaled 1 from time k * dt
  to (k + 1) * dt and 0 otherwise; a last keyframe at n * dt holds the last frame for its dt
  before the loop. At rest (no animation playing) frame 0 shows. Each scene has its own
  animation ("frames", "frames (vertex colours)").
- ``target`` on every vertex and index bufferView (the validator's hint).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import trimesh
from PIL import Image

from threedgen.export.axes import Up, to_file

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_INT = 5126, 5125
_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (the sRGB transfer function)."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def textured_trimesh(m, up: Up) -> trimesh.Trimesh:
    """A TexturedMesh (``export.mesh``) as a trimesh mesh in the file's frame: vertices and unit
    normals turned to ``up``, the UVs and the texture under an unlit-looking PBR material
    (metallic 0, roughness 1: the colours are baked as rendered)."""
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(m.texture), metallicFactor=0.0, roughnessFactor=1.0)
    return trimesh.Trimesh(to_file(m.verts, up), m.faces, vertex_normals=to_file(m.normals, up), process=False,
                           visual=trimesh.visual.TextureVisuals(uv=m.uv, material=material))


def glb(meshes: list, up: Up, frame_seconds: float | None = None) -> bytes:
    """The .glb of TexturedMeshes (module doc): one mesh -> a static file; several, with
    ``frame_seconds`` (dt) -> frames played in turn."""
    scene = trimesh.Scene()
    names = ["mesh"] if len(meshes) == 1 else [f"frame_{k:03d}" for k in range(len(meshes))]
    for name, m in zip(names, meshes):
        scene.add_geometry(textured_trimesh(m, up), node_name=name, geom_name=name)
    tree, blob = read_glb(trimesh.exchange.gltf.export_glb(scene, include_normals=True))
    textured = [next(i for i, n in enumerate(tree["nodes"]) if n["name"] == name) for name in names]
    coloured = add_vertex_colour_scene(tree, blob, textured, [m.vertex_colors for m in meshes])
    if len(meshes) > 1:
        animate(tree, blob, textured, frame_seconds, "frames")
        animate(tree, blob, coloured, frame_seconds, "frames (vertex colours)")
    set_targets(tree)
    return pack_glb(tree, bytes(blob))


# ---------------------------------------------------------------------- additions
def append_accessor(tree: dict, blob: bytearray, data: np.ndarray, target: int | None = None,
                    bounds: bool = False) -> int:
    """Append data [count] or [count, 1 | 3 | 4] (float32 or uint32) as a bufferView of its own
    (4-byte aligned) and an accessor on it -> the accessor's index. ``bounds``: with min / max
    (required for POSITION and animation inputs)."""
    data = np.ascontiguousarray(data)
    blob.extend(b"\0" * (-len(blob) % 4))
    view = {"buffer": 0, "byteOffset": len(blob), "byteLength": data.nbytes}
    if target is not None:
        view["target"] = target
    blob.extend(data.tobytes())
    tree["bufferViews"].append(view)
    width = 1 if data.ndim == 1 else data.shape[1]
    accessor = {"bufferView": len(tree["bufferViews"]) - 1, "componentType": FLOAT if data.dtype == np.float32 else UNSIGNED_INT,
                "count": len(data), "type": _TYPES[width]}
    if bounds:
        flat = data.reshape(len(data), width)
        accessor.update(min=flat.min(0).tolist(), max=flat.max(0).tolist())
    tree["accessors"].append(accessor)
    return len(tree["accessors"]) - 1


def add_vertex_colour_scene(tree: dict, blob: bytearray, nodes: list[int], colours: list[np.ndarray]) -> list[int]:
    """Scene 1 (module doc): for each textured node, a node whose mesh has the same POSITION,
    NORMAL and indices plus COLOR_0 from ``colours`` [V, 3] uint8 (sRGB) -> the new nodes."""
    tree["materials"].append({"name": "vertex colours", "pbrMetallicRoughness": {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}})
    new = []
    for node, rgb in zip(nodes, colours):
        (prim,) = tree["meshes"][tree["nodes"][node]["mesh"]]["primitives"]
        linear = srgb_to_linear(np.asarray(rgb, np.float32) / 255).astype(np.float32)
        attributes = {k: prim["attributes"][k] for k in ("POSITION", "NORMAL")}
        attributes["COLOR_0"] = append_accessor(tree, blob, linear, ARRAY_BUFFER)
        tree["meshes"].append({"name": f"{tree['nodes'][node]['name']} (vertex colours)", "primitives": [
            {"attributes": attributes, "indices": prim["indices"], "material": len(tree["materials"]) - 1,
             "mode": 4}]})
        tree["nodes"].append({"name": f"{tree['nodes'][node]['name']} (vertex colours)",
                              "mesh": len(tree["meshes"]) - 1})
        new.append(len(tree["nodes"]) - 1)
    tree["scenes"].append({"name": "vertex colours", "nodes": new})
    return new


def animate(tree: dict, blob: bytearray, nodes: list[int], dt: float, name: str) -> None:
    """An animation showing ``nodes`` one after another, dt seconds each (module doc); every
    node but the first is scaled 0 at rest."""
    n = len(nodes)
    times = append_accessor(tree, blob, (np.arange(n + 1) * dt).astype(np.float32), bounds=True)
    samplers, channels = [], []
    for k, node in enumerate(nodes):
        shown = np.arange(n + 1) == k
        shown[n] = k == n - 1  # the end keyframe holds the last frame
        scale = np.repeat(shown[:, None], 3, 1).astype(np.float32)  # [n + 1, 3]
        samplers.append({"input": times, "output": append_accessor(tree, blob, scale), "interpolation": "STEP"})
        channels.append({"sampler": k, "target": {"node": node, "path": "scale"}})
        if k:
            tree["nodes"][node]["scale"] = [0.0, 0.0, 0.0]
    tree.setdefault("animations", []).append({"name": name, "samplers": samplers, "channels": channels})


def set_targets(tree: dict) -> None:
    """Every bufferView under a primitive's attributes or indices gets its GPU buffer target."""
    for mesh in tree["meshes"]:
        for prim in mesh["primitives"]:
            for accessor, target in [*[(a, ARRAY_BUFFER) for a in prim["attributes"].values()],
                                     (prim["indices"], ELEMENT_ARRAY_BUFFER)]:
                tree["bufferViews"][tree["accessors"][accessor]["bufferView"]]["target"] = target


# ---------------------------------------------------------------------- the container
def read_glb(data: bytes) -> tuple[dict, bytearray]:
    """A .glb -> (its JSON, its binary chunk)."""
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2, (magic, version)
    json_len, _ = struct.unpack_from("<II", data, 12)
    tree = json.loads(data[20:20 + json_len])
    offset = 20 + json_len
    blob = bytearray()
    if offset < len(data):
        bin_len, _ = struct.unpack_from("<II", data, offset)
        blob = bytearray(data[offset + 8:offset + 8 + bin_len])
    return tree, blob


def pack_glb(tree: dict, blob: bytes) -> bytes:
    """(JSON, binary chunk) -> a .glb; buffer 0 is the binary chunk."""
    tree["buffers"] = [{"byteLength": len(blob)}]
    text = json.dumps(tree, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    blob = blob + b"\0" * (-len(blob) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(blob), b"BIN\0") + blob
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks
