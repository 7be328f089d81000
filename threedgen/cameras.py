"""Camera batches, random samplers and fixed orbits.

Conventions (shared by every renderer, the embedded world and the priors):
- World is z-up. A camera at elevation ``el`` and azimuth ``az`` (degrees) at distance ``d`` sits at
  ``d * (cos el cos az, cos el sin az, sin el)`` and looks at the origin. Azimuth 0 is the +x axis.
- ``c2w`` is OpenGL-style (as nerfstudio / threestudio): camera x right, y up, looking down -z.
- Pixel (i, j) has its centre at (j + 0.5, i + 0.5); images are square unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Cameras:
    """A batch of B pinhole cameras looking at the origin.

    c2w: [B, 4, 4] camera-to-world (OpenGL axes). fov_y: [B] vertical field of view, degrees.
    elevation, azimuth, distance: [B] degrees, degrees, world units. time: [B] in [0, 1] or None.
    """

    c2w: Tensor
    fov_y: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    height: int
    width: int
    time: Tensor | None = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> Cameras:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(self, c2w=self.c2w[index], fov_y=self.fov_y[index],
                       elevation=self.elevation[index], azimuth=self.azimuth[index],
                       distance=self.distance[index], time=pick(self.time))

    def to(self, device) -> Cameras:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, c2w=self.c2w.to(device), fov_y=self.fov_y.to(device),
                       elevation=self.elevation.to(device), azimuth=self.azimuth.to(device),
                       distance=self.distance.to(device), time=move(self.time))

    def resized(self, height: int, width: int | None = None) -> Cameras:
        return replace(self, height=height, width=width or height)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def focal(self) -> Tensor:
        """[B] focal length in pixels (same for x and y: square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * torch.deg2rad(self.fov_y))

    def intrinsics(self) -> Tensor:
        """[B, 3, 3] OpenCV-style K (fx, fy, cx, cy in pixels)."""
        K = torch.zeros(len(self), 3, 3, device=self.device)
        K[:, 0, 0] = K[:, 1, 1] = self.focal
        K[:, 0, 2] = self.width / 2
        K[:, 1, 2] = self.height / 2
        K[:, 2, 2] = 1
        return K

    def viewmats(self) -> Tensor:
        """[B, 4, 4] world-to-camera in OpenCV axes (x right, y down, looking down +z), as gsplat wants."""
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=self.device))
        return torch.linalg.inv(self.c2w @ flip)

    def rays(self) -> tuple[Tensor, Tensor]:
        """Per-pixel rays. Returns origins and unit directions, both [B, H, W, 3]."""
        i, j = torch.meshgrid(torch.arange(self.height, device=self.device) + 0.5,
                              torch.arange(self.width, device=self.device) + 0.5, indexing="ij")
        f = self.focal[:, None, None]
        dirs = torch.stack([(j - self.width / 2) / f, -(i - self.height / 2) / f,
                            -torch.ones_like(j).expand_as(f * j)], dim=-1)  # [B, H, W, 3] camera space
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.c2w[:, None, None, :3, 3].expand_as(dirs)
        return origins, dirs

    def points_at(self, depth: Tensor) -> Tensor:
        """depth [B, 1, H, W] camera-space (along the viewing axis) -> the world points [B, H, W, 3]
        on the pixels' rays at that depth."""
        origins, dirs = self.rays()
        forward = -self.c2w[:, None, None, :3, 2]
        return origins + dirs * (depth[:, 0, ..., None] / (dirs * forward).sum(-1, keepdim=True))

    def normals_at(self, depth: Tensor, step: int = 1) -> Tensor:
        """depth [B, 1, H, W] -> world unit normals [B, 3, H, W] of the surface it back-projects
        to (``points_at``), facing the camera: the cross product of the surface's differences
        ``step`` pixels either side along the image's rows and columns (one-sided at the border)."""
        points = self.points_at(depth)  # [B, H, W, 3]
        s = step
        p = F.pad(points.permute(0, 3, 1, 2), (s, s, s, s), mode="replicate")  # [B, 3, H + 2s, W + 2s]
        du = p[..., s:-s, 2 * s:] - p[..., s:-s, :-2 * s]  # along the rows (x)
        dv = p[..., 2 * s:, s:-s] - p[..., :-2 * s, s:-s]  # along the columns (y, down)
        n = F.normalize(torch.linalg.cross(du, dv, dim=1), dim=1)
        toward = (self.c2w[:, None, None, :3, 3] - points).permute(0, 3, 1, 2)
        return torch.where((n * toward).sum(1, keepdim=True) < 0, -n, n)


def look_at(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """[B] degrees, degrees, units -> [B, 4, 4] OpenGL c2w looking at the origin, z up."""
    el, az = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    eye = distance[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1)
    back = eye / eye.norm(dim=-1, keepdim=True)  # camera +z points away from the target
    up = torch.tensor([0.0, 0.0, 1.0], device=eye.device).expand_as(back)
    right = torch.linalg.cross(up, back)
    # Looking straight down: pick the azimuth's tangent as "right".
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        right = torch.where(degenerate[:, None],
                            torch.stack([-torch.sin(az), torch.cos(az), torch.zeros_like(az)], -1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, device=eye.device).repeat(len(eye), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, eye
    return c2w


def make_cameras(elevation, azimuth, distance, fov_y, size: int, time=None) -> Cameras:
    """Cameras from per-view angles (degrees) and times. Scalars broadcast against the longest
    argument."""
    values = [torch.as_tensor(v, dtype=torch.float32) for v in (elevation, azimuth, distance, fov_y)]
    t = None if time is None else torch.as_tensor(time, dtype=torch.float32)
    n = max(v.numel() for v in values + ([t] if t is not None else []))
    el, az, d, fov = (v.reshape(-1).expand(n).clone() for v in values)
    t = None if t is None else t.reshape(-1).expand(n).clone()
    return Cameras(look_at(el, az, d), fov, el, az, d, size, size, t)


def orbit(n_views: int, elevation: float, distance: float, fov_y: float, size: int,
          start_azimuth: float = 0.0) -> Cameras:
    """n_views cameras evenly spaced in azimuth at one elevation."""
    azimuth = start_azimuth + torch.arange(n_views, dtype=torch.float32) * 360.0 / n_views
    return make_cameras(elevation, azimuth, distance, fov_y, size)


@dataclass(frozen=True)
class CameraRanges:
    """Uniform ranges (degrees / units) for random training cameras."""

    elevation: tuple[float, float] = (-10.0, 60.0)
    distance: tuple[float, float] = (2.6, 3.0)
    fov_y: tuple[float, float] = (30.0, 30.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)


def sample_cameras(batch: int, ranges: CameraRanges, size: int,
                   generator: torch.Generator | None = None, views_per_group: int = 1) -> Cameras:
    """Random cameras; azimuths are stratified: one per 1/batch of ``ranges.azimuth``, with a
    random offset.

    views_per_group V > 1 (multi-view priors such as MVDream): batch / V groups of V consecutive
    views that share elevation, distance and field of view, at azimuths 360/V apart from a random
    start (V = 4: 90 degrees), whatever ``ranges.azimuth``."""
    if views_per_group > 1:
        V = views_per_group
        G = batch // V
        u = lambda lo_hi: (lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(G, generator=generator)).repeat_interleave(V)  # noqa: E731
        elevation, distance, fov = u(ranges.elevation), u(ranges.distance), u(ranges.fov_y)
        start = torch.rand(G, generator=generator) * 360.0
        azimuth = ((start[:, None] + torch.arange(V) * 360.0 / V) % 360.0 - 180.0).reshape(-1)
        return make_cameras(elevation, azimuth, distance, fov, size)
    u = lambda lo_hi: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(batch, generator=generator)  # noqa: E731
    # Uniform on the sphere's band rather than uniform in angle would oversample the equator; the
    # priors are trained uniform in angle, so sample the same way.
    elevation = u(ranges.elevation)
    lo, hi = ranges.azimuth
    offset = torch.rand(1, generator=generator) * (hi - lo) / batch
    azimuth = (offset + torch.arange(batch) * (hi - lo) / batch) + lo
    azimuth = azimuth[torch.randperm(batch, generator=generator)]
    return make_cameras(elevation, azimuth, u(ranges.distance), u(ranges.fov_y), size)
