"""Isosurfaces of a representation's density, with the level chosen from its own renders.

A density field has no natural surface level: NeRF densities of a crisp object span decades, and a
Gaussian mixture's sum depends on the splat count. Rather than a hand-tuned threshold, the level
is the one whose solid {density > level} has the same silhouettes as the representation's own
renders: from a ring of views, a pixel of the solid is covered iff the maximum of the density
along its ray exceeds the level, so one pass of ray samples gives every candidate's masks, and
the level maximising the mean IoU against the rendered masks (alpha > 0.5) wins.

The surface is then scikit-image's marching cubes on a regular grid of the density, with its
small disconnected pieces (floaters) dropped.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from threedgen.cameras import Cameras, make_cameras
from threedgen.render.volume import ray_aabb


def sample_grid(grid: Tensor, points: Tensor, aabb: float) -> Tensor:
    """grid [R, R, R] of values at the vertices spanning [-aabb, aabb]^3, indexed [x, y, z];
    points [M, 3] -> trilinear values [M] (border values outside the box)."""
    # grid_sample's 3D grid is (x -> W, y -> H, z -> D) of a [D, H, W] volume: ours is [x, y, z].
    uvw = (points / aabb).flip(-1)[None, :, None, None]  # [1, M, 1, 1, 3]
    vol = grid[None, None]
    return F.grid_sample(vol, uvw, align_corners=True, padding_mode="border").reshape(-1)


def ray_max(grid: Tensor, aabb: float, cameras: Cameras, n_samples: int = 128) -> Tensor:
    """[B, H, W]: the maximum of the interpolated grid along each pixel's ray inside the box
    (-inf for rays that miss the box)."""
    B, H, W = len(cameras), cameras.height, cameras.width
    origins, dirs = (x.reshape(-1, 3) for x in cameras.rays())
    t0, t1, hit = ray_aabb(origins, dirs, aabb)
    u = (torch.arange(n_samples, dtype=grid.dtype) + 0.5) / n_samples
    t = t0[:, None] + (t1 - t0).clamp_min(0)[:, None] * u  # [N, S]
    points = origins[:, None] + t[..., None] * dirs[:, None]
    values = sample_grid(grid, points.reshape(-1, 3), aabb).reshape(-1, n_samples).amax(-1)
    return torch.where(hit, values, torch.full_like(values, -torch.inf)).reshape(B, H, W)


def choose_level(grid: Tensor, aabb: float, cameras: Cameras, masks: Tensor,
                 n_candidates: int = 256, level: float | None = None) -> tuple[float, float]:
    """The level whose solid's silhouettes best match ``masks`` [B, H, W] bool (module doc).
    Candidates are quantiles of the ray maxima; ``level`` scores that one level instead.
    Returns (level, mean IoU at that level)."""
    peak = ray_max(grid, aabb, cameras)  # [B, H, W]
    if level is None:
        finite = peak[torch.isfinite(peak)]
        levels = torch.quantile(finite, torch.linspace(0.0, 1.0, n_candidates, dtype=finite.dtype)).unique()
    else:
        levels = torch.tensor([level], dtype=peak.dtype)
    solid = peak[None] > levels[:, None, None, None]  # [L, B, H, W]
    inter = (solid & masks).sum((2, 3)).float()
    union = (solid | masks).sum((2, 3)).float().clamp_min(1)
    score = (inter / union).mean(1)  # [L]
    best = int(score.argmax())
    return float(levels[best]), float(score[best])


def silhouette_cameras(size: int = 64, distance: float = 2.8, fov_y: float = 30.0) -> Cameras:
    """Eight views: a ring of six at 20 degrees elevation, one from above and one from below."""
    elevation = [20.0] * 6 + [80.0, -60.0]
    azimuth = [60.0 * k for k in range(6)] + [0.0, 0.0]
    return make_cameras(elevation, azimuth, distance, fov_y, size)


@torch.no_grad()
def extract_isosurface(representation, resolution: int = 64, min_piece: float = 0.05,
                       level: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mesh of ``representation``'s density (any module with ``aabb``, ``density_grid(R)`` and
    ``render(cameras, background)``).

    Returns verts [V, 3] float32 (world), faces [F, 3] int64 (counter-clockwise seen from outside:
    normals point out of the solid), and info {"level", "silhouette_iou", "resolution"}.
    Pieces with fewer than ``min_piece`` of the largest piece's faces are dropped. ``level``
    overrides the chosen level. Raises ValueError (one line) when there is no surface."""
    from skimage.measure import marching_cubes
    import trimesh

    aabb = float(representation.aabb)
    grid = representation.density_grid(resolution).float().cpu()
    cams = silhouette_cameras()
    masks = representation.render(cams, torch.ones(3)).cpu().alpha[:, 0] > 0.5  # alpha: any background
    if not masks.any() and level is None:
        raise ValueError("no surface: the representation renders empty (alpha < 0.5) from every view")
    level, score = choose_level(grid, aabb, cams, masks, level=level)
    if not grid.min() < level < grid.max():
        raise ValueError(f"no surface: the density grid lies entirely on one side of level {level:g}")
    verts, faces, _, _ = marching_cubes(grid.numpy(), level, spacing=(2 * aabb / (resolution - 1),) * 3)
    # Density grows inwards, so marching cubes' "descent" normals point out; flip the winding to
    # make faces counter-clockwise seen from outside.
    mesh = trimesh.Trimesh(verts - aabb, faces[:, ::-1], process=True)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        biggest = max(len(p.faces) for p in pieces)
        mesh = trimesh.util.concatenate([p for p in pieces if len(p.faces) >= min_piece * biggest])
    info = {"level": level, "silhouette_iou": score, "resolution": resolution}
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64), info
