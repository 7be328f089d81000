"""Sampling the volume fields' grids: trilinear (the NeRF's vertex grid) and triplane (three
bilinear planes, summed), as ``F.grid_sample`` with align_corners=True computes them.

On CPU, when the points need no gradient, numba kernels (``render/cpu_kernels.py``) run both
directions: torch's CPU grid_sample backward is serial and took most of a NeRF or triplane step.
Elsewhere (CUDA or any other device, or points that require grad: normals need the double backward that the
kernels do not provide) this is ``F.grid_sample`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from threedgen.render import cpu_kernels as kernels
from threedgen.render.cpu_kernels import as_numpy

PLANE_AXES = kernels.PLANE_AXES  # xy, xz, yz


def _use_kernels(grid: Tensor, points: Tensor) -> bool:
    return grid.device.type == "cpu" and not points.requires_grad


def _chunks(points: Tensor) -> int:
    """Chunks of points for a backward scatter (each into its own grid, summed in order): set by
    the number of points alone, never by the thread count, so that results do not depend on it."""
    return max(1, min(4, points.shape[0] // 16384))


class _Sample(torch.autograd.Function):
    """data [..., C] (channel-last grid or planes), points [M, 3] -> [M, C] by a pair of kernels
    (forward(data, points, aabb, out), backward(points, aabb, grad_out, grads)); gradients to
    data only."""

    @staticmethod
    def forward(ctx, data, points, aabb, forward_kernel, backward_kernel):
        out = data.new_empty(points.shape[0], data.shape[-1])
        with kernels.threads():
            forward_kernel(as_numpy(data), as_numpy(points), aabb, out.numpy())
        ctx.save_for_backward(points)
        ctx.aabb, ctx.shape, ctx.backward_kernel = aabb, data.shape, backward_kernel
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (points,) = ctx.saved_tensors
        grads = grad_out.new_zeros(_chunks(points), *ctx.shape)
        with kernels.threads():
            ctx.backward_kernel(as_numpy(points), ctx.aabb, as_numpy(grad_out), grads.numpy())
        return grads.sum(0), None, None, None, None


def sample_grid(grid: Tensor, points: Tensor, aabb: float) -> Tensor:
    """grid [C, R, R, R] over [x, y, z] (vertex 0 at -aabb, R-1 at +aabb), points [M, 3] ->
    [M, C], trilinear; points outside the box take the boundary values."""
    if _use_kernels(grid, points):
        return _Sample.apply(grid.permute(1, 2, 3, 0), points, aabb, kernels.trilinear_forward,
                             kernels.trilinear_backward)
    # grid_sample reads a [D, H, W] volume at (x -> W, y -> H, z -> D): ours is [x, y, z].
    uvw = (points / aabb).flip(-1)[None, :, None, None]  # [1, M, 1, 1, 3]
    raw = F.grid_sample(grid[None], uvw, align_corners=True, padding_mode="border")
    return raw[0, :, :, 0, 0].t()


def sample_triplane(planes: Tensor, points: Tensor, aabb: float) -> Tensor:
    """planes [3, C, R, R] (xy, xz, yz), points [M, 3] in [-aabb, aabb]^3 -> features [M, C]: the
    sum of the three planes bilinearly sampled at the point's projections. Plane k's pixel
    [c, i, j] sits at (first axis, second axis) = (-aabb + 2 aabb j / (R-1), -aabb + 2 aabb i / (R-1));
    outside the planes, zero padding."""
    if _use_kernels(planes, points):
        return _Sample.apply(planes.permute(0, 2, 3, 1), points, aabb, kernels.triplane_forward,
                             kernels.triplane_backward)
    p = points / aabb  # [M, 3] in [-1, 1]
    uv = torch.stack([p[:, list(axes)] for axes in PLANE_AXES])[:, :, None]  # [3, M, 1, 2]
    # One call, the planes as a batch of three: one fused kernel forward and backward.
    return F.grid_sample(planes, uv, align_corners=True)[..., 0].sum(0).t()  # [M, C]
