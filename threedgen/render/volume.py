"""Volume rendering of a density + colour field inside the cube [-aabb, aabb]^3.

Two paths with one signature and one output:

- CPU (and CUDA without an estimator): rays are clipped to the box in pure torch (slab method),
  each ray that hits the box gets ``n_samples`` samples spread uniformly over its chord (one per
  equal bin, jittered inside the bin when ``stratified``), the field is evaluated only at those
  samples, and nerfacc's batched ``render_weight_from_density`` / ``accumulate_along_rays``
  composite them, with autograd.
- CUDA with a nerfacc ``OccGridEstimator``: ``estimator.sampling`` marches the rays with empty
  space skipping (step = ``2 * aabb / n_samples``, so a ray through the middle of the box gets
  about ``n_samples`` samples) and the packed nerfacc functions composite them.

Depth is the expected *camera-space* depth (distance along the camera's viewing axis, as the
Gaussian renderer's), ``sum_i w_i z_i / max(alpha, DEPTH_ALPHA_FLOOR)``: the exact expected depth
of the visible surface wherever alpha >= DEPTH_ALPHA_FLOOR, fading linearly to 0 where the pixel is
(almost) empty, and exactly 0 for rays that miss the box.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from threedgen.cameras import Cameras
from threedgen.render.types import RenderOutput, VolumeInfo

FieldFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""points [M, 3] -> (density [M] >= 0, rgb [M, 3] in [0, 1])."""

DEPTH_ALPHA_FLOOR = 1e-3


def ray_aabb(origins: Tensor, dirs: Tensor, aabb: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab intersection of rays with the cube [-aabb, aabb]^3.

    origins, dirs: [N, 3] (dirs need not be unit). Returns t_near [N], t_far [N] (t_near clamped to
    >= 0, so a camera inside the box starts at its origin) and hit [N] bool (t_far > t_near)."""
    safe = torch.where(dirs.abs() < 1e-12, torch.where(dirs < 0, -1e-12, 1e-12), dirs)
    inv = 1.0 / safe
    t0 = (-aabb - origins) * inv
    t1 = (aabb - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


def _field_with_normals(field_fn: FieldFn, points: Tensor, with_normals: bool):
    """Evaluates the field; with normals, also -grad(density)/|grad(density)| [M, 3] by autograd.

    The gradient graph is kept (create_graph) whenever autograd is on outside, so losses on the
    normals (orientation) train the field."""
    if not with_normals:
        density, rgb = field_fn(points)
        return density, rgb, None
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        density, rgb = field_fn(points)
        (grad,) = torch.autograd.grad(density.sum(), points, create_graph=outer_grad)
    normals = -grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    if not outer_grad:
        density, rgb, normals = density.detach(), rgb.detach(), normals.detach()
    return density, rgb, normals


def render_volume(field_fn: FieldFn, cameras: Cameras, *, aabb: float, n_samples: int,
                  background: Tensor, stratified: bool, generator: torch.Generator | None = None,
                  estimator=None, with_normals: bool = False) -> RenderOutput:
    """Renders ``field_fn`` from ``cameras``.

    field_fn: points [M, 3] -> (density [M] >= 0, rgb [M, 3] in [0, 1]); only called on points
        inside the box. aabb: half-size of the cube. n_samples: samples per ray (CPU path) or the
        step ``2 * aabb / n_samples`` (estimator path). background: [3] colour composited behind.
        stratified: jitter samples (training). generator: for the jitter (CPU path; any device's data).
        estimator: optional nerfacc OccGridEstimator, used only when the cameras are on CUDA.
        with_normals: also render normals (world space, unit before accumulation, accumulated
        with the weights, so their length is ~alpha).

    Returns RenderOutput with rgb [B, 3, H, W], alpha / depth [B, 1, H, W], normal [B, 3, H, W]
    or None, and info: ``VolumeInfo``, the samples (per hit ray on the CPU path, packed on the
    estimator path) with their weights, and their normals when ``with_normals``.
    """
    B, H, W = len(cameras), cameras.height, cameras.width
    origins, dirs = cameras.rays()
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n_rays = origins.shape[0]
    # cos of the angle between each ray and its camera's viewing axis (-z of c2w): t -> depth.
    forward = -cameras.c2w[:, :3, 2]
    cos = (dirs.reshape(B, H * W, 3) * forward[:, None]).sum(-1).reshape(-1)
    background = background.to(origins)

    if estimator is not None and origins.is_cuda:
        return _render_estimator(field_fn, estimator, origins, dirs, cos, (B, H, W), aabb=aabb,
                                 n_samples=n_samples, background=background,
                                 stratified=stratified, with_normals=with_normals)

    import nerfacc

    t_near, t_far, hit = ray_aabb(origins, dirs, aabb)
    ray_indices = hit.nonzero().squeeze(-1)
    o, d = origins[ray_indices], dirs[ray_indices]
    t_near, t_far = t_near[ray_indices], t_far[ray_indices]
    R = ray_indices.shape[0]

    # Equal bins over each chord; the sample sits at a random (stratified) or central place in its
    # bin, and its interval is the bin, so the intervals tile the chord exactly.
    step = ((t_far - t_near) / n_samples)[:, None]  # [R, 1]
    edges = torch.arange(n_samples, device=o.device, dtype=o.dtype)[None]  # [1, S]
    t_starts = t_near[:, None] + edges * step
    t_ends = t_starts + step
    if stratified:
        # Drawn where the generator lives (the systems' are on the CPU), then moved.
        u = torch.rand(R, n_samples, generator=generator, dtype=o.dtype).to(o.device)
    else:
        u = torch.full((1, 1), 0.5, device=o.device, dtype=o.dtype)
    t = t_starts + u * step
    points = o[:, None] + t[..., None] * d[:, None]  # [R, S, 3]

    def flat(x: Tensor) -> Tensor:  # [R, C] rows of the hit rays -> [n_rays, C], zeros elsewhere
        return x.new_zeros(n_rays, x.shape[-1]).index_copy(0, ray_indices, x)

    if R == 0:
        zeros = torch.zeros(n_rays, 1, device=origins.device, dtype=origins.dtype)
        rgb_flat = background.expand(n_rays, 3)
        alpha_flat = depth_flat = zeros
        normal_flat = zeros.expand(n_rays, 3) if with_normals else None
        weights = t.new_zeros(0, n_samples)
        normals = points.new_zeros(0, n_samples, 3) if with_normals else None
    else:
        density, rgb, normals = _field_with_normals(field_fn, points.reshape(-1, 3), with_normals)
        density = density.reshape(R, n_samples)
        rgb = rgb.reshape(R, n_samples, 3)
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, density)
        alpha = nerfacc.accumulate_along_rays(weights, None)  # [R, 1]
        color = nerfacc.accumulate_along_rays(weights, rgb)  # [R, 3]
        t_exp = nerfacc.accumulate_along_rays(weights, t[..., None])  # [R, 1], unnormalised
        depth = t_exp * cos[ray_indices, None] / alpha.clamp_min(DEPTH_ALPHA_FLOOR)
        alpha_flat, depth_flat = flat(alpha), flat(depth)
        rgb_flat = flat(color) + background * (1.0 - alpha_flat)
        normal_flat = None
        if with_normals:
            normals = normals.reshape(R, n_samples, 3)
            normal_flat = flat(nerfacc.accumulate_along_rays(weights, normals))

    info = VolumeInfo(weights=weights, t=t, points=points, dirs=d, normals=normals)
    return _assemble(rgb_flat, alpha_flat, depth_flat, normal_flat, (B, H, W), info)


def _assemble(rgb, alpha, depth, normal, shape, info: VolumeInfo) -> RenderOutput:
    B, H, W = shape
    img = lambda x: x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return RenderOutput(rgb=img(rgb), alpha=img(alpha), depth=img(depth),
                        normal=None if normal is None else img(normal), info=info)


def _render_estimator(field_fn: FieldFn, estimator, origins: Tensor, dirs: Tensor, cos: Tensor,
                      shape, *, aabb: float, n_samples: int, background: Tensor, stratified: bool,
                      with_normals: bool) -> RenderOutput:
    """CUDA path: OccGridEstimator marching + packed nerfacc compositing (see module doc)."""
    import nerfacc

    n_rays = origins.shape[0]
    t_near, t_far, hit = ray_aabb(origins, dirs, aabb)
    # Rays that miss get an empty interval, so the estimator emits no samples for them.
    t_far = torch.where(hit, t_far, t_near)
    step = 2.0 * aabb / n_samples

    def sigma_fn(t_starts, t_ends, ray_idx):
        p = origins[ray_idx] + dirs[ray_idx] * ((t_starts + t_ends) / 2)[:, None]
        return field_fn(p)[0]

    with torch.no_grad():
        ray_idx, t_starts, t_ends = estimator.sampling(
            origins, dirs, sigma_fn=sigma_fn, t_min=t_near, t_max=t_far,
            render_step_size=step, stratified=stratified)
    ray_idx = ray_idx.long()
    t = (t_starts + t_ends) / 2
    d = dirs[ray_idx]
    points = origins[ray_idx] + d * t[:, None]
    if t.shape[0] == 0:
        zeros = torch.zeros(n_rays, 1, device=origins.device, dtype=origins.dtype)
        info = VolumeInfo(weights=t, t=t, points=points, dirs=d, normals=points if with_normals else None)
        return _assemble(background.expand(n_rays, 3), zeros, zeros,
                         zeros.expand(n_rays, 3) if with_normals else None, shape, info)

    density, rgb, normals = _field_with_normals(field_fn, points, with_normals)
    weights, _, _ = nerfacc.render_weight_from_density(
        t_starts, t_ends, density, ray_indices=ray_idx, n_rays=n_rays)
    acc = lambda v: nerfacc.accumulate_along_rays(  # noqa: E731
        weights, v, ray_indices=ray_idx, n_rays=n_rays)
    alpha = acc(None)
    rgb_out = acc(rgb) + background * (1.0 - alpha)
    depth = acc(t[:, None]) * cos[:, None] / alpha.clamp_min(DEPTH_ALPHA_FLOOR)
    normal_out = acc(normals) if with_normals else None
    info = VolumeInfo(weights=weights, t=t, points=points, dirs=d, normals=normals)
    return _assemble(rgb_out, alpha, depth, normal_out, shape, info)


@torch.no_grad()
def surface_colour(field_fn: FieldFn, points: Tensor, normals: Tensor, depth: float,
                   n_samples: int = 16) -> Tensor:
    """The colour a ray along -normal sees at a surface point: the field composited over the
    segment from ``points + depth * normals`` to ``points - depth * normals`` and divided by the
    segment's opacity (a bare surface colour, without the background). points, unit normals
    [M, 3] -> rgb [M, 3]; a segment with no opacity takes the field's colour at the point."""
    import nerfacc

    M, S = points.shape[0], n_samples
    step = 2 * depth / S
    t_starts = (torch.arange(S, dtype=points.dtype, device=points.device) * step).expand(M, S)
    samples = points[:, None] + (depth - (t_starts + step / 2))[..., None] * normals[:, None]
    density, rgb = field_fn(samples.reshape(-1, 3))
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_starts + step, density.reshape(M, S))
    opacity = weights.sum(-1, keepdim=True)
    composite = (weights[..., None] * rgb.reshape(M, S, 3)).sum(1) / opacity.clamp_min(1e-8)
    return torch.where(opacity > 1e-4, composite, field_fn(points)[1])
