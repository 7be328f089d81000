"""A differentiable triangle-mesh rasterizer in pure torch (CPU or GPU, any float dtype).

Projection (same pinhole model and pixel convention as the Gaussian renderer and the world):
camera point c = R^T (v - eye) with R, eye from the OpenGL c2w; depth z = -c_z;
pixel u = f c_x / z + W / 2, v = -f c_y / z + H / 2; pixel (i, j) is sampled at its centre
(j + 0.5, i + 0.5).

Three passes per image:

1. Visibility (no grad). Every face is listed in the pixels whose centres lie in its screen
   bounding box; a pixel is inside when its three edge functions have the sign of the face's area
   (either winding, no back-face culling, shared edges inclusive). The nearest face per pixel wins
   a ``scatter_reduce(amin)`` of the key ``float32 bits of z << 32 | face id`` (positive floats
   order like their bit patterns). Faces with a vertex closer than ``near`` are dropped.
2. Interior (differentiable). For the winning face, screen barycentrics b_k = e_k(p) / area are
   recomputed from the projected vertices, then made perspective-correct:
   w_k = (b_k / z_k) / sum_l (b_l / z_l); depth = 1 / sum_l (b_l / z_l); the surface point
   x = sum_k w_k v_k is shaded by the caller's ``shader(x, n)``: colours are a function of the
   surface point and the face's unit normal n (from its winding), e.g. a 3D texture field plus
   lighting, rather than per-vertex colours. Moving a vertex moves the point seen through a
   pixel, so gradients reach vertices through the shader's inputs, and reach the shader's own
   parameters.
3. Silhouette (differentiable). A contour edge is an edge between a face facing the camera and
   one facing away, or a boundary edge. A pixel within ``margin = 5 sigma`` pixels of a contour
   edge (empty pixels, and covered ones within ``margin`` of an empty pixel) takes
   alpha = sigmoid(s d / sigma), d the screen distance from its centre to the nearest contour
   segment, s = +1 if covered else -1 (d, hence alpha, are continuous across the edge:
   alpha = 0.5 on it; sigma ~0.3 px makes the 10-90% ramp about 1.3 px wide). Empty pixels take the shaded colour of the edge's camera-facing face at
   the segment's closest point. This is a signed-distance antialiasing of the outline: alpha's
   gradient moves the outline's vertices. Edges hidden behind the surface are not tested for
   visibility; an empty pixel's nearest contour is always the visible outline, a covered one's
   may be a hidden contour nearer than the outline (a limitation for non-convex meshes).

rgb = alpha * colour + (1 - alpha) * background; depth and normal are not antialiased.
Cost: O(faces + bounding-box pixels) without grad, O(covered pixels + outline pixels) with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from threedgen.cameras import Cameras
from threedgen.render.types import RenderOutput

Shader = Callable[[Tensor, Tensor], Tensor]  # points [N, 3], unit normals [N, 3] -> rgb [N, 3]
_EMPTY = torch.iinfo(torch.int64).max
_LOW32 = (1 << 32) - 1


@dataclass(frozen=True)
class MeshEdges:
    """Edge topology of a triangle mesh. verts [E, 2] (sorted vertex ids); faces [E, 2] the two
    faces sharing the edge (a boundary edge repeats its one face; an edge with more than two faces
    keeps two of them); boundary [E] bool."""

    verts: Tensor
    faces: Tensor
    boundary: Tensor


def mesh_edges(faces: Tensor) -> MeshEdges:
    """faces [F, 3] long -> MeshEdges."""
    F_ = faces.shape[0]
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    face_of = torch.arange(F_, device=faces.device).repeat(3)  # [3F]
    verts, inverse, counts = torch.unique(pairs, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)  # half-edges grouped by edge
    first = torch.cumsum(counts, 0) - counts
    sorted_faces = face_of[order]
    second = torch.where(counts > 1, first + 1, first)
    return MeshEdges(verts, torch.stack([sorted_faces[first], sorted_faces[second]], 1), counts == 1)


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """verts [V, 3], faces [F, 3] -> [F, 3] unit normals, counter-clockwise winding = outward."""
    v = verts[faces]
    return F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1)


def project(verts: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """verts [V, 3] world -> (pixel coordinates [B, V, 2] (x right, y down), depth z [B, V])."""
    c2w = cameras.c2w.to(verts)
    cam = torch.einsum("vi,bij->bvj", verts, c2w[:, :3, :3]) - torch.einsum(
        "bi,bij->bj", c2w[:, :3, 3], c2w[:, :3, :3])[:, None]  # (v - eye) R = R^T (v - eye)
    z = -cam[..., 2]
    f = cameras.focal.to(verts)[:, None]
    xy = torch.stack([f * cam[..., 0] / z + cameras.width / 2,
                      -f * cam[..., 1] / z + cameras.height / 2], dim=-1)
    return xy, z


def _cross2(a: Tensor, b: Tensor) -> Tensor:
    """2D cross product of [..., 2] vectors -> [...]."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _box_pixels(lo: Tensor, hi: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels whose centres lie in boxes lo, hi [M, 2] (x, y in pixels).

    Returns (box index [N], row i [N], column j [N]) for every (box, pixel) pair."""
    j0 = torch.ceil(lo[:, 0] - 0.5).clamp(min=0).long()
    j1 = torch.floor(hi[:, 0] - 0.5).clamp(max=width - 1).long()
    i0 = torch.ceil(lo[:, 1] - 0.5).clamp(min=0).long()
    i1 = torch.floor(hi[:, 1] - 0.5).clamp(max=height - 1).long()
    w, h = (j1 - j0 + 1).clamp(min=0), (i1 - i0 + 1).clamp(min=0)
    n = w * h
    box = torch.repeat_interleave(torch.arange(len(n), device=lo.device), n)
    k = torch.arange(box.numel(), device=lo.device) - (torch.cumsum(n, 0) - n)[box]
    wb = w[box]
    return box, i0[box] + k // wb, j0[box] + k % wb


@torch.no_grad()
def _visible_faces(xy: Tensor, z: Tensor, faces: Tensor, height: int, width: int,
                   near: float) -> Tensor:
    """Z-buffer. xy [B, V, 2], z [B, V] -> [B * H * W] long: front face id per pixel, -1 if empty."""
    B = xy.shape[0]
    xy, z = xy.float(), z.float()
    tri, tz = xy[:, faces], z[:, faces]  # [B, F, 3, 2], [B, F, 3]
    area = _cross2(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])  # [B, F]
    b, f = ((tz.amin(-1) > near) & (area.abs() > 1e-12)).nonzero(as_tuple=True)
    tri, tz, area = tri[b, f], tz[b, f], area[b, f]  # [M, 3, 2], [M, 3], [M]
    box, i, j = _box_pixels(tri.amin(1), tri.amax(1), height, width)
    p = torch.stack([j, i], -1).float() + 0.5  # [N, 2]
    t, s = tri[box], area[box].sign()[:, None]
    e = torch.stack([_cross2(t[:, 2] - t[:, 1], p - t[:, 1]), _cross2(t[:, 0] - t[:, 2], p - t[:, 2]),
                     _cross2(t[:, 1] - t[:, 0], p - t[:, 0])], -1)  # [N, 3] edge functions
    inside = (e * s >= 0).all(-1)
    depth = 1 / ((e / area[box, None]) / tz[box]).sum(-1)
    key = (depth.view(torch.int32).long() << 32) | f[box]
    pixel = (b[box] * height + i) * width + j
    zbuf = torch.full((B * height * width,), _EMPTY, device=xy.device)
    zbuf.scatter_reduce_(0, pixel[inside], key[inside], "amin")
    return torch.where(zbuf == _EMPTY, -1, zbuf & _LOW32)


def _barycentrics(xy: Tensor, z: Tensor, faces: Tensor, pixel: Tensor, face: Tensor,
                  height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Perspective-correct barycentrics at pixel centres. xy [B, V, 2], z [B, V]; pixel [N] flat
    ids into B * H * W, face [N]. Returns vertex ids [N, 3], weights [N, 3], depth [N]."""
    b = pixel // (height * width)
    i, j = (pixel // width) % height, pixel % width
    p = torch.stack([j, i], -1).to(xy) + 0.5
    vid = faces[face]  # [N, 3]
    t, tz = xy[b[:, None], vid], z[b[:, None], vid]  # [N, 3, 2], [N, 3]
    e = torch.stack([_cross2(t[:, 2] - t[:, 1], p - t[:, 1]), _cross2(t[:, 0] - t[:, 2], p - t[:, 2]),
                     _cross2(t[:, 1] - t[:, 0], p - t[:, 0])], -1)
    q = e / (e.sum(-1, keepdim=True) * tz)  # b_k / z_k (the edge functions sum to the area)
    depth = 1 / q.sum(-1)
    return vid, q * depth[:, None], depth


def _interior(verts: Tensor, faces: Tensor, normals: Tensor, xy: Tensor, z: Tensor,
              pixel: Tensor, face: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable attributes at covered pixels. pixel [N] flat ids into B * H * W, face [N].

    Returns surface points [N, 3] (world), depth [N], normals [N, 3]."""
    vid, w, depth = _barycentrics(xy, z, faces, pixel, face, height, width)
    points = (w[..., None] * verts[vid]).sum(1)
    return points, depth, normals[face]


@torch.no_grad()
def rasterize(xy: Tensor, z: Tensor, faces: Tensor, height: int, width: int,
              near: float = 0.01) -> tuple[Tensor, Tensor]:
    """The visibility pass alone, for any 2D layout of a mesh (a camera's projection, or a UV
    atlas with z = 1). xy [B, V, 2] pixel coordinates, z [B, V] depths, faces [F, 3].

    Returns face ids [B, H, W] (-1 where empty) and perspective-correct barycentrics
    [B, H, W, 3] (0 where empty)."""
    B = xy.shape[0]
    face_ids = _visible_faces(xy, z, faces, height, width, near)
    pixel = (face_ids >= 0).nonzero().squeeze(-1)
    _, w, _ = _barycentrics(xy, z, faces, pixel, face_ids[pixel], height, width)
    bary = w.new_zeros(B * height * width, 3).index_put((pixel,), w)
    return face_ids.reshape(B, height, width), bary.reshape(B, height, width, 3)


def _contours(verts: Tensor, normals: Tensor, edges: MeshEdges, z: Tensor,
              cameras: Cameras, near: float) -> tuple[Tensor, Tensor, Tensor]:
    """Contour edges per view: (view [K], edge [K], the edge's camera-facing face [K])."""
    eye = cameras.c2w[:, :3, 3].to(verts)
    with torch.no_grad():
        # A face faces camera b when its normal points towards the eye.
        anchor = verts[edges.verts[:, 0]]  # [E, 3] a point of both faces of the edge
        toward = eye[:, None] - anchor[None]  # [B, E, 3]
        front = (normals[edges.faces] * toward[:, :, None]).sum(-1) > 0  # [B, E, 2]
        contour = (edges.boundary | (front[..., 0] != front[..., 1])) \
            & (z[:, edges.verts].amin(-1) > near)
        b, e = contour.nonzero(as_tuple=True)
        facing = torch.where(front[b, e, 0] | edges.boundary[e], edges.faces[e, 0], edges.faces[e, 1])
    return b, e, facing


def _segment_distance(p: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Points p, segments a-b, all [N, 2] -> (distance [N], closest-point parameter t [N] in [0, 1])."""
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (p - a - t[:, None] * ab).square().sum(-1).add(1e-12).sqrt(), t


def _outline_pixels(xy: Tensor, edges: MeshEdges, view: Tensor, edge: Tensor, covered: Tensor,
                    height: int, width: int, margin: float) -> tuple[Tensor, Tensor]:
    """Pixels within ``margin`` of a contour segment, and that segment (no grad).

    covered [B, H, W] bool. Empty pixels qualify, and covered ones within ``margin`` (Chebyshev,
    in whole pixels) of an empty pixel. Returns (flat pixel ids [N], index into view/edge [N])."""
    with torch.no_grad():
        r = int(margin + 0.5)
        near_empty = F.max_pool2d((~covered)[:, None].float(), 2 * r + 1, stride=1, padding=r)
        eligible = near_empty[:, 0].reshape(-1) > 0
        a, b = (xy[view, edges.verts[edge, k]].float() for k in (0, 1))  # [K, 2]
        box, i, j = _box_pixels(torch.minimum(a, b) - margin, torch.maximum(a, b) + margin,
                                height, width)
        p = torch.stack([j, i], -1).float() + 0.5
        dist, _ = _segment_distance(p, a[box], b[box])
        pixel = (view[box] * height + i) * width + j
        keep = (dist < margin) & eligible[pixel]
        pixel, box, dist = pixel[keep], box[keep], dist[keep]
        best = torch.full((covered.numel(),), _EMPTY, device=xy.device)
        best.scatter_reduce_(0, pixel, (dist.view(torch.int32).long() << 32) | box, "amin")
        hit = (best != _EMPTY).nonzero().squeeze(-1)
        return hit, best[hit] & _LOW32


def _outline(verts: Tensor, normals: Tensor, edges: MeshEdges, xy: Tensor, z: Tensor,
             cameras: Cameras, covered: Tensor, sigma: float, near: float):
    """Antialiased outline (differentiable). covered [B, H, W] bool.

    Returns pixels [M] (flat ids into B * H * W), their alpha [M], and for the empty ones among
    them (rows ``empty`` [K] of M): the closest point of their contour edge [K, 3] (world) and the
    normal of its camera-facing face [K, 3]."""
    B, H, W = covered.shape
    view, edge, facing = _contours(verts, normals, edges, z, cameras, near)
    pixel, k = _outline_pixels(xy, edges, view, edge, covered, H, W, 5 * sigma)
    ev, ee = view[k], edges.verts[edge[k]]  # [M], [M, 2]
    p = torch.stack([pixel % W, (pixel // W) % H], -1).to(xy) + 0.5
    dist, t = _segment_distance(p, xy[ev, ee[:, 0]], xy[ev, ee[:, 1]])
    inside = covered.reshape(-1)[pixel]
    alpha = torch.sigmoid(torch.where(inside, dist, -dist) / sigma)
    empty = (~inside).nonzero().squeeze(-1)
    ev, ee, t = ev[empty], ee[empty], t[empty]
    za, zb = z[ev, ee[:, 0]], z[ev, ee[:, 1]]
    s = (t / zb / ((1 - t) / za + t / zb))[:, None]  # screen parameter -> 3D parameter
    points = verts[ee[:, 0]] * (1 - s) + verts[ee[:, 1]] * s
    return pixel, alpha, empty, points, normals[facing[k[empty]]]


def render_mesh(verts: Tensor, faces: Tensor, shader: Shader, cameras: Cameras, background: Tensor,
                edges: MeshEdges | None = None, sigma: float = 0.3, near: float = 0.01) -> RenderOutput:
    """Render a triangle mesh into a batch of cameras (see the module docstring for the math).

    verts [V, 3] world positions; faces [F, 3] long (counter-clockwise seen from outside);
    shader(points [N, 3] world, normals [N, 3] unit world) -> rgb [N, 3], called once per render on
    the visible surface points and the outline's edge points (colours are a function of the
    surface point, e.g. a 3D texture field, plus shading); background [3]; edges: the precomputed
    ``mesh_edges(faces)`` (computed if None); sigma: outline softness in pixels; near: faces with
    a vertex closer to the camera than this are dropped. Any float dtype (float64 for gradcheck).

    Returns RenderOutput: rgb [B, 3, H, W]; alpha [B, 1, H, W]; depth [B, 1, H, W] camera-space
    depth along the viewing axis (0 where empty); normal [B, 3, H, W] world unit face normals where
    covered (0 elsewhere); info None (``rasterize`` gives the visible face of each pixel).
    """
    H, W, B = cameras.height, cameras.width, len(cameras)
    edges = edges if edges is not None else mesh_edges(faces)
    cameras = cameras.to(verts.device)
    xy, z = project(verts, cameras)
    normals = face_normals(verts, faces)
    face_ids = _visible_faces(xy, z, faces, H, W, near)  # [B * H * W]
    covered = face_ids >= 0
    pixel = covered.nonzero().squeeze(-1)
    points, depth, pix_normals = _interior(verts, faces, normals, xy, z, pixel, face_ids[pixel], H, W)
    out_pixel, out_alpha, empty, edge_points, edge_normals = _outline(
        verts, normals, edges, xy, z, cameras, covered.reshape(B, H, W), sigma, near)

    rgb = shader(torch.cat([points, edge_points]), torch.cat([pix_normals, edge_normals]))
    n_pix = B * H * W
    colour = rgb.new_zeros(n_pix, 3).index_put((torch.cat([pixel, out_pixel[empty]]),), rgb)
    alpha = covered.to(xy).index_put((out_pixel,), out_alpha)[:, None]
    image = alpha * colour + (1 - alpha) * background.to(xy)
    depth_img = xy.new_zeros(n_pix).index_put((pixel,), depth)
    normal_img = xy.new_zeros(n_pix, 3).index_put((pixel,), pix_normals)

    def chw(x: Tensor) -> Tensor:
        return x.reshape(B, H, W, -1).permute(0, 3, 1, 2)

    return RenderOutput(rgb=chw(image), alpha=chw(alpha), depth=chw(depth_img[:, None]),
                        normal=chw(normal_img))
