"""3D Gaussian splatting on CPU: a tiled rasterizer, a dense torch reference, and one entry point.

Why a CPU path exists: gsplat's rasterizer is a set of CUDA kernels that are JIT-compiled on
first use; without CUDA (tests, CPU-only machines) they fail to build, and gsplat's own
``_torch_impl`` reference still calls a CUDA kernel (``rasterize_to_indices_in_range``) and bins
tiles in a Python loop over Gaussians. ``rasterize_cpu`` is a drop-in for the subset of
``gsplat.rasterization`` we use (pinhole, ``packed=False``, classic mode): same arguments, same
outputs, same ``meta`` keys, so gsplat's ``DefaultStrategy`` works unchanged on CPU.
``render_gaussians`` uses gsplat's kernels for CUDA tensors and ``rasterize_cpu`` otherwise.

Semantics follow gsplat 1.5.3's CUDA kernels:
- projection: EWA with ``eps2d`` blur; radii use the opacity-aware extent
  ``min(3.33, sqrt(2 ln(255 o)))`` so that every pixel outside a Gaussian's box has alpha < 1/255;
  radii are 0 (Gaussian culled) behind ``near_plane``, beyond ``far_plane``, for opacity < 1/255
  or when the box misses the image.
- compositing: ``alpha = min(0.999, o exp(-0.5 d^T conic d))``, dropped below 1/255, front to back
  by camera depth; a pixel stops (exclusively) once its transmittance would fall to <= 1e-4.
  No gradient flows through the 0.999 clamp, as in gsplat's backward kernel.
- ``render_alphas`` is the accumulated opacity; backgrounds are added as ``(1 - alpha) * bg``;
  "ED" depth is divided by ``alpha.clamp(min=1e-10)``.

How the CPU path is fast: projection, tile binning and compositing, forward and backward, are
numba kernels (``render/cpu_kernels.py``): a pure-torch version of the same algorithm spent most
of its time in the overhead of hundreds of small ops. A Gaussian is listed only in the tiles its
alpha >= 1/255 ellipse reaches (box test, then an exact box-ellipse test), and each pixel stops
at its own transmittance cut-off; within a tile, a Gaussian visits only the pixels under its
ellipse's bounding box. ``render_gaussians`` uses 16x16 tiles (``CPU_TILE_SIZE``).

``rasterize_dense`` is the reference the kernels are tested against: plain torch autograd,
every Gaussian at every pixel, with its own projection (``_project``, gsplat's torch helpers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from gsplat.cuda._torch_impl import (
    _persp_proj,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
    _world_to_cam,
)

from threedgen.cameras import Cameras
from threedgen.render import cpu_kernels as kernels
from threedgen.render.cpu_kernels import ALPHA_MAX, ALPHA_THRESHOLD, EXTENT_MAX, T_MIN, as_numpy
from threedgen.render.types import RenderOutput, SplatInfo

LOG_T_MIN = math.log(T_MIN)
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
CPU_TILE_SIZE = 16  # fastest overall at 32-128 px, 2k-5k Gaussians (8 is close at 32 px)

# ----------------------------------------------------------------------------------------------
# The reference's projection (torch), and colours (shared)
# ----------------------------------------------------------------------------------------------

def _project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
             eps2d):
    """EWA projection of N Gaussians into C cameras.

    Returns radii [C, N, 2] int32 (0 = culled), means2d [C, N, 2] (pixels), depths [C, N]
    (camera z), conics [C, N, 3] (upper triangle of the inverse 2D covariance: a, b, c with
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy), opacities [C, N].
    """
    C, N = viewmats.shape[0], means.shape[0]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)  # [N, 3, 3]
    means_c, covars_c = _world_to_cam(means, covars, viewmats)  # [C, N, 3], [C, N, 3, 3]
    depths = means_c[..., 2]
    in_range = (depths > near_plane) & (depths < far_plane)
    # Gaussians behind the camera are culled anyway; give them a harmless position so their
    # projection (a division by z) stays finite and their (zero) gradients stay NaN-free.
    safe = torch.tensor([0.0, 0.0, 1.0], dtype=means_c.dtype, device=means_c.device)
    means_c = torch.where(in_range[..., None], means_c, safe)
    means2d, cov2d = _persp_proj(means_c, covars_c, Ks, width, height)  # [C, N, 2], [C, N, 2, 2]
    a = cov2d[..., 0, 0] + eps2d
    c = cov2d[..., 1, 1] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]
    opacities = opacities[None, :].expand(C, N)

    with torch.no_grad():
        opac = opacities.detach()
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp_max(EXTENT_MAX)
        radius = torch.stack([torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0))),
                              torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))], dim=-1)
        m = means2d.detach()
        inside = ((m[..., 0] + radius[..., 0] > 0) & (m[..., 0] - radius[..., 0] < width)
                  & (m[..., 1] + radius[..., 1] > 0) & (m[..., 1] - radius[..., 1] < height))
        valid = in_range & (det.detach() > 0) & (opac >= ALPHA_THRESHOLD) & inside
        valid &= (radius > 0).all(dim=-1)
        radii = torch.where(valid[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return radii, means2d, depths, conics, opacities


def _check_colors(colors, N, C, sh_degree):
    if sh_degree is None:
        assert colors.dim() in (2, 3) and colors.shape[-2] == N, colors.shape
        assert colors.dim() == 2 or colors.shape[0] == C, colors.shape
    else:
        assert colors.dim() in (3, 4) and colors.shape[-3] == N and colors.shape[-1] == 3, \
            colors.shape
        assert colors.dim() == 3 or colors.shape[0] == C, colors.shape
        assert (sh_degree + 1) ** 2 <= colors.shape[-2], colors.shape


def _colors_at(colors, sh_degree, means, viewmats, cam_ids, g_ids):
    """Per-(camera, Gaussian) colours [M, D] for the M pairs (cam_ids[i], g_ids[i]).

    colors: [N, D] or [C, N, D] post-activation features, or SH coefficients [N, K, 3] /
    [C, N, K, 3] when sh_degree is given (evaluated towards the camera, then +0.5 and clamped
    at 0, as gsplat does).
    """
    per_camera = colors.dim() == (3 if sh_degree is None else 4)
    if per_camera:
        picked = colors.flatten(0, 1).index_select(0, cam_ids * colors.shape[1] + g_ids)
    else:
        picked = colors.index_select(0, g_ids)
    if sh_degree is None:
        return picked
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means.index_select(0, g_ids) - campos.index_select(0, cam_ids)  # [M, 3]
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, picked) + 0.5, 0.0)


def _features(render_mode, colors_m, depths_m):
    """[M, D'] features to composite: colours and/or depth (as the last channel)."""
    if render_mode in ("RGB+D", "RGB+ED"):
        return torch.cat([colors_m, depths_m[:, None]], dim=-1)
    if render_mode in ("D", "ED"):
        return depths_m[:, None]
    return colors_m


def _finish(render, render_alphas, backgrounds, render_mode):
    """Adds backgrounds and normalises "ED" depth. render [C, H, W, D'], alphas [C, H, W, 1]."""
    has_depth = render_mode != "RGB"
    if backgrounds is not None and render_mode not in ("D", "ED"):
        bg = backgrounds
        if has_depth:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
        render = render + bg[:, None, None, :] * (1.0 - render_alphas)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / render_alphas.clamp(min=1e-10)],
                           dim=-1)
    return render


def _meta(radii, means2d, depths, conics, opacities, width, height, tile_size, C):
    if means2d.requires_grad:
        means2d.retain_grad()  # DefaultStrategy reads meta["means2d"].grad after backward
    tile_width = math.ceil(width / tile_size)
    tile_height = math.ceil(height / tile_size)
    return {
        "batch_ids": None, "camera_ids": None, "gaussian_ids": None,
        "radii": radii, "means2d": means2d, "depths": depths, "conics": conics,
        "opacities": opacities, "tile_width": tile_width, "tile_height": tile_height,
        "width": width, "height": height, "tile_size": tile_size, "n_batches": 1,
        "n_cameras": C,
    }


# ----------------------------------------------------------------------------------------------
# Tiled CPU rasterizer (numba kernels in render/cpu_kernels.py)
# ----------------------------------------------------------------------------------------------

class _Project(torch.autograd.Function):
    """EWA projection on CPU: (means [N, 3], quats [N, 4], scales [N, 3]) -> radii [C, N, 2]
    int32 (not differentiable), means2d [C, N, 2], depths [C, N], conics [C, N, 3], as
    ``_project`` (the torch reference) computes them. Opacities only cull (their gradient comes
    through compositing); no gradient flows to the cameras."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, near, far,
                eps2d):
        C, N = viewmats.shape[0], means.shape[0]
        means2d, depths = means.new_empty(C, N, 2), means.new_empty(C, N)
        conics = means.new_empty(C, N, 3)
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        arrays = [as_numpy(t) for t in (means, quats, scales, opacities, viewmats, Ks)]
        with kernels.threads():
            kernels.project_forward(*arrays, width, height, near, far, eps2d, means2d.numpy(),
                                    depths.numpy(), conics.numpy(), radii.numpy())
        ctx.mark_non_differentiable(radii)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.sizes = (width, height, eps2d)
        return radii, means2d, depths, conics

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _, g_means2d, g_depths, g_conics):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        C, N = viewmats.shape[0], means.shape[0]
        g_means2d = means.new_zeros(C, N, 2) if g_means2d is None else g_means2d
        g_depths = means.new_zeros(C, N) if g_depths is None else g_depths
        g_conics = means.new_zeros(C, N, 3) if g_conics is None else g_conics
        grads = [torch.zeros_like(t) for t in (means, quats, scales)]
        arrays = [as_numpy(t) for t in (means, quats, scales, viewmats, Ks)]
        with kernels.threads():
            kernels.project_backward(*arrays, *ctx.sizes, as_numpy(radii), as_numpy(g_means2d),
                                     as_numpy(g_depths), as_numpy(g_conics),
                                     *[g.numpy() for g in grads])
        return (*grads, *[None] * 8)


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of the tiles of C images over their depth-sorted lists.

    Per visible pair: means2d [M, 2], conics [M, 3], opacities [M], feats [M, D]; reach [M]
    (log(255 o), no grad); entries [I] (long, pair indices grouped by tile, depth-sorted),
    starts/counts [C th tw] (long). Returns [C, H, W, D + 1]: composited features and, last,
    the accumulated alpha.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, reach, entries, starts, counts,
                tile_size, tile_width, tile_height, image_size):
        C, (H, W), D = counts.shape[0] // (tile_width * tile_height), image_size, feats.shape[1]
        out = feats.new_zeros(C, H, W, D + 1)
        final_trans = torch.empty(C, H, W, dtype=torch.float64)
        ends = torch.empty(C, H, W, dtype=torch.int64)
        geometry = (means2d, conics, opacities, reach, feats)
        with kernels.threads():
            kernels.composite_forward(*[as_numpy(t) for t in (*geometry, entries, starts, counts)],
                                      tile_size, tile_width, tile_height, out.numpy(),
                                      final_trans.numpy(), ends.numpy())
        ctx.save_for_backward(*geometry, entries, starts, final_trans, ends)
        ctx.tiles = (tile_size, tile_width, tile_height)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        # (means2d, conics, opacities, reach, feats, entries, starts, final_trans, ends)
        saved = ctx.saved_tensors
        feats, entries = saved[4:6]
        I, (M, D) = entries.shape[0], feats.shape
        g_geom, g_feats = feats.new_zeros(I, 6), feats.new_zeros(I, D)
        with kernels.threads():
            kernels.composite_backward(*[as_numpy(t) for t in saved], *ctx.tiles,
                                       as_numpy(grad_out), g_geom.numpy(), g_feats.numpy())
        # Per intersection -> per pair.
        g_geom = feats.new_zeros(M, 6).index_add_(0, entries, g_geom)
        g_feats = feats.new_zeros(M, D).index_add_(0, entries, g_feats)
        return (g_geom[:, :2], g_geom[:, 2:5], g_geom[:, 5], g_feats, *[None] * 8)


def rasterize_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backgrounds: Tensor | None = None,
    sh_degree: int | None = None,
    tile_size: int = 16,
    eps2d: float = 0.3,
    render_mode: str = "RGB+ED",
) -> tuple[Tensor, Tensor, dict]:
    """Tiled 3DGS rasterizer for CPU tensors with gsplat.rasterization's interface (packed=False).

    Args:
        means [N, 3], quats [N, 4] (wxyz, need not be normalised), scales [N, 3] (linear),
        opacities [N] (in [0, 1]), colors [N, D] or [C, N, D] (post-activation) or SH
        coefficients [N, K, 3] / [C, N, K, 3] when sh_degree is given.
        viewmats [C, 4, 4] world-to-camera (OpenCV axes), Ks [C, 3, 3]. backgrounds [C, D].
        render_mode: "RGB", "D", "ED", "RGB+D" or "RGB+ED" (depth appended as the last channel).
        tile_size: does not change the image (16 is gsplat's and ``CPU_TILE_SIZE``).

    Returns:
        render_colors [C, H, W, D (+1 with depth)], render_alphas [C, H, W, 1], meta (gsplat's
        keys: "radii" [C, N, 2] int32, "means2d" [C, N, 2] with retained grad, "depths" [C, N],
        "conics" [C, N, 3], "opacities" [C, N], "width", "height", "n_cameras",
        "gaussian_ids" None, "tiles_per_gauss" [C, N], "flatten_ids" [I], "isect_offsets"
        [C, th, tw], ...).

    Projection, tile binning and compositing (forward and backward) run in numba kernels
    (``render/cpu_kernels.py``); colours, spherical harmonics and backgrounds in torch.
    """
    assert render_mode in RENDER_MODES, render_mode
    if means.device.type != "cpu":
        raise ValueError(f"rasterize_cpu takes CPU tensors, got {means.device}; use backend 'gsplat' (CUDA) or 'dense'")
    N, C = means.shape[0], viewmats.shape[0]
    _check_colors(colors, N, C, sh_degree)
    viewmats, Ks = viewmats.to(means.dtype), Ks.to(means.dtype)
    radii, means2d, depths, conics = _Project.apply(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    opac_cn = opacities[None, :].expand(C, N)
    meta = _meta(radii, means2d, depths, conics, opac_cn, width, height, tile_size, C)
    tw, th = meta["tile_width"], meta["tile_height"]

    # The visible (camera, Gaussian) pairs [M], with the projection they are composited with.
    cam_ids, g_ids = (radii > 0).all(dim=-1).nonzero(as_tuple=True)
    pair = cam_ids * N + g_ids
    pair_means2d = means2d.reshape(C * N, 2).index_select(0, pair)
    pair_conics = conics.reshape(C * N, 3).index_select(0, pair)
    pair_depths = depths.reshape(-1).index_select(0, pair)
    with torch.no_grad():  # their tile lists
        reach = torch.log(opacities.detach()[g_ids] / ALPHA_THRESHOLD)
        by_depth = torch.argsort(pair_depths.detach())
        with kernels.threads():
            lists = kernels.intersect(*[as_numpy(t) for t in (
                cam_ids, pair_means2d, radii.reshape(C * N, 2)[pair], pair_conics, reach,
                by_depth)], tile_size, tw, th, width, height, C)
        entries, tile_counts, per_pair = (torch.from_numpy(a) for a in lists)
        tile_starts = torch.cumsum(tile_counts, 0) - tile_counts
        tiles_per_gauss = torch.zeros(C, N, dtype=torch.int32)
        tiles_per_gauss[cam_ids, g_ids] = per_pair.int()
        meta["tiles_per_gauss"] = tiles_per_gauss
        meta["flatten_ids"] = pair[entries].int()
        meta["isect_offsets"] = tile_starts.reshape(C, th, tw).int()

    feats = _features(render_mode, _colors_at(colors, sh_degree, means, viewmats, cam_ids, g_ids),
                      pair_depths)  # [M, D]
    D = feats.shape[-1]
    img = _Composite.apply(pair_means2d, pair_conics, opacities.index_select(0, g_ids), feats,
                           reach, entries, tile_starts, tile_counts, tile_size, tw, th,
                           (height, width))
    render, render_alphas = img[..., :D], img[..., D:]
    render = _finish(render, render_alphas, backgrounds, render_mode)
    return render, render_alphas, meta


# ----------------------------------------------------------------------------------------------
# Dense reference
# ----------------------------------------------------------------------------------------------

def _composite_dense(px, py, mx, my, conic, opac, feats):
    """Every Gaussian against every pixel, plain autograd. px, py [P]; mx, my, opac [C, N]
    (depth-sorted, opac 0 for culled); conic [C, N, 3]; feats [C, N, D].
    Returns [C, P, D + 1] (features, then alpha)."""
    dx = px[None, None, :] - mx[..., None]  # [C, N, P]
    dy = py[None, None, :] - my[..., None]
    a, b, c = (t[..., None] for t in conic.unbind(-1))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opac[..., None] * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    log_1m = torch.log1p(-alpha)
    cum = torch.cumsum(log_1m, dim=1)
    alpha = torch.where(cum.detach() > LOG_T_MIN, alpha, torch.zeros_like(alpha))
    weights = alpha * torch.exp(cum - log_1m)
    out = torch.einsum("cnp,cnd->cpd", weights, feats)
    return torch.cat([out, weights.sum(dim=1)[..., None]], dim=-1)


def rasterize_dense(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backgrounds: Tensor | None = None,
    sh_degree: int | None = None,
    tile_size: int = 16,
    eps2d: float = 0.3,
    render_mode: str = "RGB+ED",
    pixel_chunk: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """All-pixels reference for ``rasterize_cpu`` (same arguments and outputs): every Gaussian
    is evaluated at every pixel (culled ones get zero opacity), no tiles, plain autograd. Pixels
    are processed in chunks of ``pixel_chunk`` (default: about 4M Gaussian-pixel pairs per
    chunk), under activation checkpointing when there are more than 16M pairs, to bound memory. ``tile_size`` only sets meta's tile
    fields."""
    assert render_mode in RENDER_MODES, render_mode
    N, C = means.shape[0], viewmats.shape[0]
    _check_colors(colors, N, C, sh_degree)
    device, dtype = means.device, means.dtype
    radii, means2d, depths, conics, opac_cn = _project(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    meta = _meta(radii, means2d, depths, conics, opac_cn, width, height, tile_size, C)
    visible = (radii > 0).all(dim=-1)
    cam_ids = torch.arange(C, device=device)[:, None].expand(C, N).reshape(-1)
    g_ids = torch.arange(N, device=device)[None, :].expand(C, N).reshape(-1)
    feats = _features(render_mode, _colors_at(colors, sh_degree, means, viewmats, cam_ids, g_ids),
                      depths.reshape(-1)).reshape(C, N, -1)
    D = feats.shape[-1]
    # Sort by depth per camera; culled Gaussians get opacity 0 (and finite stand-in values).
    order = torch.argsort(depths.detach(), dim=1)
    def take(t):
        return torch.gather(t, 1, order.view(C, N, *([1] * (t.dim() - 2))).expand_as(t))

    vis = take(visible)
    mx, my = take(means2d[..., 0]), take(means2d[..., 1])
    conic = take(conics)
    opac = torch.where(vis, take(opac_cn), torch.zeros_like(mx))
    feats = torch.where(vis[..., None], take(feats), torch.zeros_like(feats))
    i, j = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    py, px = i.reshape(-1), j.reshape(-1)
    pixel_chunk = pixel_chunk or max(1, (1 << 22) // max(C * N, 1))
    # Checkpoint only big problems: its first use costs seconds (it imports torch's compiler).
    checkpointed = torch.is_grad_enabled() and C * N * height * width > (1 << 24)
    chunks = []
    for s in range(0, px.numel(), pixel_chunk):
        args = (px[s:s + pixel_chunk], py[s:s + pixel_chunk], mx, my, conic, opac, feats)
        if checkpointed:
            chunks.append(torch.utils.checkpoint.checkpoint(_composite_dense, *args, use_reentrant=False,
                                                            preserve_rng_state=False))  # draws nothing
        else:
            chunks.append(_composite_dense(*args))
    img = torch.cat(chunks, dim=1).reshape(C, height, width, D + 1)
    render, render_alphas = img[..., :D], img[..., D:]
    render = _finish(render, render_alphas, backgrounds, render_mode)
    return render, render_alphas, meta


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

AUTO_BACKENDS = {"cuda": "gsplat", "cpu": "cpu"}  # device type -> backend; any other: "dense"


def render_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    cameras: Cameras,
    background: Tensor,
    sh_degree: int | None = None,
    backend: str = "auto",
) -> RenderOutput:
    """Render activated Gaussians into a batch of cameras.

    means [N, 3], quats [N, 4] (wxyz), scales [N, 3] (linear), opacities [N] in [0, 1],
    colors [N, 3] (RGB in [0, 1]) or SH coefficients [N, K, 3] with sh_degree; background [3].
    backend: "auto" (by the tensors' device: gsplat's kernels on CUDA, the numba kernels on the
    CPU, the torch reference elsewhere), "cpu" (tiled, numba kernels), "dense" (torch reference)
    or "gsplat".
    Returns RenderOutput with rgb [B, 3, H, W], alpha [B, 1, H, W], depth [B, 1, H, W] (expected
    depth, 0 where alpha is 0), normal None, info: ``SplatInfo``, read from the rasterizer's meta,
    the same fields from every backend (for densification).
    """
    if backend == "auto":
        backend = AUTO_BACKENDS.get(means.device.type, "dense")
    viewmats, Ks = cameras.viewmats().to(means), cameras.intrinsics().to(means)
    B = viewmats.shape[0]
    backgrounds = background.to(means).reshape(1, 3).expand(B, 3)
    kwargs = dict(backgrounds=backgrounds, sh_degree=sh_degree, render_mode="RGB+ED")
    size = (cameras.width, cameras.height)
    if backend == "gsplat":
        from gsplat import rasterization
        render, alphas, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks,
                                             *size, packed=False, **kwargs)
    elif backend == "cpu":
        render, alphas, meta = rasterize_cpu(means, quats, scales, opacities, colors, viewmats,
                                               Ks, *size, tile_size=CPU_TILE_SIZE, **kwargs)
    elif backend == "dense":
        render, alphas, meta = rasterize_dense(means, quats, scales, opacities, colors, viewmats,
                                               Ks, *size, **kwargs)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()  # for DefaultStrategy (rasterize_cpu does it already)
    rgb = render[..., :3].permute(0, 3, 1, 2)
    alpha = alphas.permute(0, 3, 1, 2)
    depth = torch.where(alpha > 0, render[..., 3:4].permute(0, 3, 1, 2), torch.zeros_like(alpha))
    info = SplatInfo(means2d=meta["means2d"], radii=meta["radii"], width=meta["width"],
                     height=meta["height"], n_cameras=meta["n_cameras"])
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=None, info=info)
