"""Textured meshes from any representation, their files, and how faithful they are.

- Surface: the mesh representation's own triangles; for NeRF, triplane and Gaussians, the
  isosurface of the density (``representations.isosurface``: the level whose silhouettes match the
  renders, small pieces dropped), optionally decimated to a face budget by quadric decimation
  (fast-simplification), keeping a closed surface closed.
- Appearance: the colour the renders show at each surface point, at the vertices (vertex
  colours) and at every texel centre of an xatlas atlas (the texture). Texels are found by
  rasterizing the atlas with the project's rasterizer (``render.mesh.rasterize``, z = 1).
  The colour is back-projected from 48 renders around the object (``projected_colours``: where
  the mesh's own depth shows the point is visible), or, for points no view sees and when no
  views are given, ``rep.surface_colour(points, normals)``. Empty texels take the colour of the
  nearest filled one (seam dilation: bilinear lookups and mipmaps never pull in the background).
  The colours are as rendered, shading included: the embedded prior learnt shaded objects, so
  the exported asset looks like the renders under an unlit (emissive-like) material.
- Normals: smooth (area-weighted) vertex normals of the welded surface, before the atlas splits
  vertices at its seams, carried to the split copies through xatlas's vertex map.
- Files (each written atomically), y-up by default (``up``; ``export.axes``): ``.glb``
  (``export.gltf``: normals, texture, vertex colours; one file), ``.obj`` with normals, its
  ``.mtl`` and texture ``.png`` in a folder of its own, ``.ply`` (normals, vertex colours,
  per-vertex ``s t`` UVs and a ``comment TextureFile`` naming the texture beside it, as MeshLab
  writes).
- ``fidelity``: the textured mesh re-rendered by the project's rasterizer against the
  representation's own renders (silhouette IoU, colour PSNR inside the rendered mask).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image
from torch import Tensor

from threedgen.cameras import Cameras, make_cameras
from threedgen.export.axes import Up, to_file
from threedgen.export.gltf import glb, textured_trimesh
from threedgen.render.mesh import face_normals, project, rasterize
from threedgen.representations.isosurface import extract_isosurface
from threedgen.files import atomic_write


class SurfaceError(ValueError):
    """No usable surface (empty or degenerate geometry); the message is one line."""


@dataclass
class TexturedMesh:
    """verts [V, 3] float32 (world, z up); faces [F, 3] int64 (counter-clockwise seen from
    outside); uv [V, 2] float32 in [0, 1] (v up, the OBJ convention); texture [T, T, 3] uint8
    (row 0 is v = 1); vertex_colors [V, 3] uint8 (sRGB, as rendered); normals [V, 3] float32
    unit, outward, smooth (computed before the seams split the vertices, so the copies of a
    vertex on either side of a seam share one); info: how it was made."""

    verts: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    vertex_colors: np.ndarray
    normals: np.ndarray
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- geometry
def extract_surface(rep, grid: int = 128, level: float | None = None, min_piece: float = 0.05,
                    max_faces: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(verts [V, 3] float32, faces [F, 3] int64, info) of the representation's surface (module
    doc). Raises SurfaceError when there is none."""
    if rep.meshed_as == "triangles":
        verts, faces = rep.verts.detach().cpu().numpy(), rep.faces.cpu().numpy()
        info = {"source": "mesh"}
    else:
        try:
            verts, faces, info = extract_isosurface(rep, resolution=grid, level=level, min_piece=min_piece)
        except ValueError as e:
            raise SurfaceError(str(e)) from None
        info = {"source": "isosurface", **info}
    if max_faces and len(faces) > max_faces:
        verts, faces = decimate(verts, faces, max_faces)
    if len(faces) < 4 or _area(verts, faces) < 1e-6:
        raise SurfaceError(f"no surface: the extracted geometry is degenerate ({len(faces)} faces)")
    return verts.astype(np.float32), faces.astype(np.int64), {**info, "faces": len(faces)}


def _area(verts: np.ndarray, faces: np.ndarray) -> float:
    v = verts[faces]
    return float(np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=-1).sum() / 2)


def decimate(verts: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) to at most about ``max_faces`` faces.

    Edge collapses can pinch a closed surface: two vertices left at one point, non-manifold once
    merged (seen after a 1e-5 change of the isosurface level). For a watertight input,
    aggression levels are tried in turn and the first watertight result is kept (the last one if
    none is)."""
    import fast_simplification

    # Watertight as trimesh (and a viewer) sees it: coincident vertices merged.
    closed = trimesh.Trimesh(verts, faces).is_watertight
    for aggression in (7, 5, 3, 9):  # 7 is fast-simplification's default
        v, f = fast_simplification.simplify(verts, faces, target_reduction=1 - max_faces / len(faces),
                                            agg=aggression)
        if not closed or trimesh.Trimesh(v, f).is_watertight:
            break
    return np.asarray(v, np.float32), np.asarray(f, np.int64)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """[V, 3] unit normals: area-weighted sums of the adjacent faces' normals."""
    v = verts[faces]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])  # [F, 3], length = 2 * area
    acc = torch.zeros_like(verts).index_add_(0, faces.reshape(-1), n.repeat_interleave(3, 0))
    return F.normalize(acc, dim=-1)


# ---------------------------------------------------------------------- appearance
def query_colours(rep, points: Tensor, normals: Tensor, chunk: int = 1 << 16) -> Tensor:
    """rep.surface_colour in chunks: points, unit normals [M, 3] (CPU) -> rgb [M, 3] in [0, 1]
    (CPU), asked of the representation on its own device."""
    device = next(rep.parameters()).device
    with torch.no_grad():
        out = [rep.surface_colour(p.to(device), n.to(device)).cpu()
               for p, n in zip(points.split(chunk), normals.split(chunk))]
    return torch.cat(out).clamp(0, 1) if out else points.new_zeros(0, 3)


def unwrap(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas atlas of the welded mesh verts [V, 3], faces [F, 3] -> (vmap [V'] int64: the
    welded vertex of each atlas vertex (vertices are split at the seams), faces [F, 3] into the
    atlas vertices, uv [V', 2] in [0, 1]). Per-vertex data follows with ``data[vmap]``."""
    import xatlas

    vmap, new_faces, uv = xatlas.parametrize(verts, faces)
    return vmap.astype(np.int64), new_faces.astype(np.int64), uv.astype(np.float32)


def texel_positions(uv: np.ndarray, size: int) -> Tensor:
    """uv [V, 2] (v up) -> [1, V, 2] pixel coordinates of a size^2 image whose row 0 is v = 1."""
    uv = torch.from_numpy(uv).double()
    return torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], -1)[None]


def bake_views(distance: float, fov_y: float, size: int = 192) -> Cameras:
    """The views a texture is baked from: 12 azimuths (from 10 degrees, off the 22.5-degree grid
    of the fidelity views) at elevations -30, 0, 30 and 60 degrees, at the run's eval camera."""
    el, az = torch.meshgrid(torch.tensor([-30.0, 0.0, 30.0, 60.0]), 10.0 + 30.0 * torch.arange(12.0), indexing="ij")
    return make_cameras(el.reshape(-1), az.reshape(-1), distance, fov_y, size)


@torch.no_grad()
def projected_colours(rep, verts: Tensor, faces: Tensor, points: Tensor, normals: Tensor,
                      cameras: Cameras, background: Tensor, chunk: int = 4) -> tuple[Tensor, Tensor]:
    """The colour the representation's renders show at surface points [M, 3] (outward unit
    normals [M, 3]) of the mesh verts [V, 3] / faces [F, 3], back-projected from ``cameras``
    (as DreamGaussian bakes its texture). In each view a point counts where the mesh's own depth
    there matches the point's (it is not hidden), it faces the camera and the render is opaque
    (alpha > 0.5); its colour there is un-premultiplied from the background, weighted by
    cos^2 of the view angle times alpha. Returns (rgb [M, 3], total weight [M]; 0 = never seen)."""
    rgb_sum, w_sum = points.new_zeros(len(points), 3), points.new_zeros(len(points))
    bg = background.to(points).view(1, 3, 1)
    for i in range(0, len(cameras), chunk):
        cams = cameras[i:i + chunk]
        ref = rep.render(cams, background).cpu()
        h, w = cams.height, cams.width
        xy, z = project(verts, cams)
        face_ids, bary = rasterize(xy, z, faces, h, w)
        z_face = z.gather(1, faces[face_ids.clamp_min(0)].reshape(len(cams), -1)).reshape(*face_ids.shape, 3)
        depth = torch.where(face_ids >= 0, (bary * z_face).sum(-1), 1e6)  # [b, H, W]
        p_xy, p_z = project(points, cams)  # [b, M, 2], [b, M]
        grid = (p_xy / p_xy.new_tensor([w, h]) * 2 - 1)[:, :, None]  # [b, M, 1, 2]
        look = lambda img, mode: F.grid_sample(img, grid, mode=mode, align_corners=False)[..., 0]  # noqa: E731
        alpha = look(ref.alpha, "bilinear")[:, 0]  # [b, M]
        colour = ((look(ref.rgb, "bilinear") - (1 - alpha[:, None]) * bg) / alpha[:, None].clamp_min(1e-3)).clamp(0, 1)
        eye = cams.c2w[:, :3, 3].to(points)
        facing = (F.normalize(eye[:, None] - points[None], dim=-1) * normals[None]).sum(-1)  # [b, M]
        seen = ((p_z - look(depth[:, None], "nearest")[:, 0]).abs() < 0.02 * p_z) & (alpha > 0.5) & (facing > 0.1)
        weight = torch.where(seen, facing.square() * alpha, 0)
        rgb_sum += torch.einsum("bm,bcm->mc", weight, colour)
        w_sum += weight.sum(0)
    return rgb_sum / w_sum.clamp_min(1e-8)[:, None], w_sum


def surface_colours(rep, verts: Tensor, faces: Tensor, points: Tensor, normals: Tensor,
                    cameras: Cameras | None, background: Tensor | None) -> Tensor:
    """rgb [M, 3] at surface points: back-projected from ``cameras`` where they see the point,
    ``rep.surface_colour`` elsewhere and when no cameras are given."""
    if cameras is None:
        return query_colours(rep, points, normals)
    rgb, weight = projected_colours(rep, verts, faces, points, normals, cameras, background)
    unseen = weight < 1e-3
    if unseen.any():
        rgb[unseen] = query_colours(rep, points[unseen], normals[unseen])
    return rgb


def texel_points(verts: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The surface under each texel centre of a size^2 atlas: (filled [size * size] bool, the
    filled texels' surface points [N, 3] and their faces' normals [N, 3])."""
    xy = texel_positions(uv, size)
    face_ids, bary = rasterize(xy, torch.ones(xy.shape[:2], dtype=xy.dtype), torch.from_numpy(faces),
                               size, size, near=0.0)
    face_ids, bary = face_ids[0].reshape(-1), bary[0].reshape(-1, 3).float()
    filled = face_ids >= 0
    if not filled.any():
        raise SurfaceError("no surface: the texture atlas covers no texel")
    fid = face_ids[filled]
    v, f = torch.from_numpy(verts), torch.from_numpy(faces)
    return filled, (bary[filled, :, None] * v[f[fid]]).sum(1), face_normals(v, f)[fid]


def fill_texture(filled: Tensor, colours: Tensor, size: int) -> np.ndarray:
    """[size, size, 3] uint8 from the filled texels' colours [N, 3], then seam dilation (module doc)."""
    from scipy.ndimage import distance_transform_edt

    texture = torch.zeros(size * size, 3).index_put((filled.nonzero().squeeze(-1),), colours)
    texture = texture.reshape(size, size, 3).numpy()
    _, (ii, jj) = distance_transform_edt(~filled.reshape(size, size).numpy(), return_indices=True)
    return to_uint8(texture[ii, jj])


def to_uint8(rgb) -> np.ndarray:
    return (np.asarray(rgb, np.float32).clip(0, 1) * 255 + 0.5).astype(np.uint8)


def textured_mesh(rep, grid: int = 128, level: float | None = None, min_piece: float = 0.05,
                  max_faces: int = 0, texture_size: int = 1024, cameras: Cameras | None = None,
                  background: Tensor | None = None) -> TexturedMesh:
    """The representation as a textured, vertex-coloured mesh (module doc); ``cameras`` (with
    ``background``): the views its colours are baked from (``bake_views``). Vertices and texels
    take their colours in one ``surface_colours`` call, so each view is rendered once."""
    welded, welded_faces, info = extract_surface(rep, grid, level, min_piece, max_faces)
    smooth = vertex_normals(torch.from_numpy(welded), torch.from_numpy(welded_faces))  # [V, 3]
    vmap, faces, uv = unwrap(welded, welded_faces)
    verts, normals = welded[vmap], smooth[vmap]
    v, f = torch.from_numpy(verts), torch.from_numpy(faces)
    filled, texels, texel_normals = texel_points(verts, faces, uv, texture_size)
    colours = surface_colours(rep, v, f, torch.cat([v, texels]), torch.cat([normals, texel_normals]),
                              cameras, background)
    return TexturedMesh(verts, faces, uv, fill_texture(filled, colours[len(v):], texture_size),
                        to_uint8(colours[:len(v)].numpy()), normals.numpy(),
                        {**info, "verts": len(verts), "texture_size": texture_size,
                         "bake": "query" if cameras is None else f"{len(cameras)} views"})


# ---------------------------------------------------------------------- files
def write_glb(m: TexturedMesh, path: Path, up: Up = "y") -> list[Path]:
    """One .glb (``export.gltf``: normals, the texture, the vertex colours in a second scene),
    ``up`` the file's up axis (glTF's is y)."""
    atomic_write(path, glb([m], up))
    return [path]


def write_obj(m: TexturedMesh, folder: Path, name: str = "mesh", up: Up = "y") -> list[Path]:
    """folder/name.obj (with ``vn`` normals), folder/name.mtl and the texture PNG it names; ``up``
    the file's up axis (y, as Blender's and three.js's importers assume)."""
    folder.mkdir(parents=True, exist_ok=True)
    text, files = trimesh.exchange.obj.export_obj(textured_trimesh(m, up), return_texture=True,
                                                  mtl_name=f"{name}.mtl", include_normals=True)
    written = []
    for fname, data in files.items():  # the texture and the .mtl first: the .obj names them
        atomic_write(folder / fname, data)
        written.append(folder / fname)
    atomic_write(folder / f"{name}.obj", text)
    return [folder / f"{name}.obj", *written]


def write_ply(m: TexturedMesh, path: Path, up: Up = "y") -> list[Path]:
    """Binary PLY: x y z, nx ny nz, red green blue (uchar), s t (UV), faces, ``up`` the file's up
    axis (y); the texture as a PNG beside it (``comment TextureFile``)."""
    texture = path.with_name(f"{path.stem}_texture.png")
    buf = io.BytesIO()
    Image.fromarray(m.texture).save(buf, format="PNG")
    atomic_write(texture, buf.getvalue())
    vertex = np.empty(len(m.verts), dtype=[("xyz", "<f4", 3), ("n", "<f4", 3), ("rgb", "u1", 3), ("st", "<f4", 2)])
    vertex["xyz"], vertex["n"], vertex["rgb"], vertex["st"] = to_file(m.verts, up), to_file(m.normals, up), m.vertex_colors, m.uv
    face = np.empty(len(m.faces), dtype=[("n", "u1"), ("idx", "<i4", 3)])
    face["n"], face["idx"] = 3, m.faces
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", f"comment TextureFile {texture.name}",
        f"element vertex {len(m.verts)}", "property float x", "property float y", "property float z",
        "property float nx", "property float ny", "property float nz",
        "property uchar red", "property uchar green", "property uchar blue",
        "property float s", "property float t",
        f"element face {len(m.faces)}", "property list uchar int vertex_indices", "end_header", ""])
    atomic_write(path, header.encode() + vertex.tobytes() + face.tobytes())
    return [path, texture]


# ---------------------------------------------------------------------- fidelity
@torch.no_grad()
def render_textured(verts: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
                    cameras: Cameras, background: Tensor, supersample: int = 4) -> tuple[Tensor, Tensor]:
    """The textured mesh through the project's rasterizer: the nearest face at each of
    ``supersample``^2 samples per pixel, a bilinear texture lookup there, no shading (colours
    are baked as rendered), averaged per pixel. Returns rgb [B, 3, H, W] over background [3]
    and coverage [B, 1, H, W] in [0, 1]."""
    s = supersample
    cams = cameras.resized(cameras.height * s, cameras.width * s)
    v, f = torch.from_numpy(np.asarray(verts, np.float32)), torch.from_numpy(np.asarray(faces, np.int64))
    xy, z = project(v, cams)
    face_ids, bary = rasterize(xy, z, f, cams.height, cams.width)
    covered = (face_ids >= 0)[:, None].float()  # [B, 1, sH, sW]
    uv_t = torch.from_numpy(np.asarray(uv, np.float32))
    uv_pix = (bary[..., None] * uv_t[f[face_ids.clamp_min(0)]]).sum(-2)  # [B, sH, sW, 2]
    grid = torch.stack([uv_pix[..., 0] * 2 - 1, 1 - uv_pix[..., 1] * 2], -1)  # row 0 is v = 1
    tex = torch.from_numpy(np.array(texture)).float().div(255).permute(2, 0, 1)[None]
    colour = F.grid_sample(tex.expand(len(cams), -1, -1, -1), grid, align_corners=False, padding_mode="border")
    rgb = covered * colour + (1 - covered) * background.view(1, 3, 1, 1).to(colour)
    return F.avg_pool2d(rgb, s), F.avg_pool2d(covered, s)


@torch.no_grad()
def fidelity(rep, verts, faces, uv, texture, cameras: Cameras, background: Tensor) -> dict:
    """How well the textured mesh reproduces the representation's renders from ``cameras``:
    {"silhouette_iou": mean over views of IoU(mesh coverage > 0.5, render alpha > 0.5),
    "psnr": colour PSNR in dB over the pixels inside the render's mask,
    "interior_psnr": the same over the pixels where both are solid (alpha and coverage > 0.98),
    which leaves out the silhouette band: a soft volumetric edge against an opaque mesh}."""
    ref = rep.render(cameras, background).cpu()
    mask = ref.alpha[:, 0] > 0.5
    rgb, coverage = render_textured(verts, faces, uv, texture, cameras, background)
    covered = coverage[:, 0] > 0.5
    iou = ((covered & mask).sum((1, 2)) / (covered | mask).sum((1, 2)).clamp_min(1)).mean()
    err = (rgb - ref.rgb).square().mean(1)
    solid = (ref.alpha[:, 0] > 0.98) & (coverage[:, 0] > 0.98)
    psnr = lambda m: round(-10 * math.log10(max(float(err[m].mean()) if m.any() else 1.0, 1e-10)), 2)  # noqa: E731
    return {"silhouette_iou": round(float(iou), 4), "psnr": psnr(mask), "interior_psnr": psnr(solid)}
