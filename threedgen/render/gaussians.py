"""3D Gaussian splatting: a pure-torch tiled rasterizer, a dense reference, and one entry point.

Why a torch path exists: gsplat's rasterizer is a set of CUDA kernels that are JIT-compiled on
first use; without CUDA (tests, CPU-only machines) they fail to build, and gsplat's own
``_torch_impl`` reference still calls a CUDA kernel (``rasterize_to_indices_in_range``) and bins
tiles in a Python loop over Gaussians. ``rasterize_torch`` is a drop-in for the subset of
``gsplat.rasterization`` we use (pinhole, ``packed=False``, classic mode): same arguments, same
outputs, same ``meta`` keys, so gsplat's ``DefaultStrategy`` works unchanged on CPU.
``render_gaussians`` uses gsplat's kernels for CUDA tensors and this path otherwise.

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

How the CPU path is fast (see ``_intersect`` and ``_CompositeTiles``): a Gaussian is listed only
in the tiles its alpha >= 1/255 ellipse reaches (box test, then an exact box-ellipse test); all
tiles are composited together a block of Gaussians at a time, and a tile drops out once all its
pixels are opaque, so hidden Gaussians cost little; the compositing backward is hand-written.
Small tiles suit CPUs: ``render_gaussians`` uses 8x8 (``CPU_TILE_SIZE``).
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
from threedgen.render.types import RenderOutput

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel is done once its transmittance would drop to <= 1e-4
LOG_T_MIN = math.log(T_MIN)
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
CPU_TILE_SIZE = 8  # fastest on CPU across small and large Gaussians (4 and 16 are worse overall)
_BLOCK = 32  # Gaussians per tile composited per step (see _CompositeTiles)
# Tiles x block x pixels composited at once, at most (bounds the memory of each step).
_MAX_STEP_ELEMENTS = 1 << 22

# ----------------------------------------------------------------------------------------------
# Projection and colours (shared by the tiled and dense rasterizers)
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
        extend = extend.clamp_max(3.33)
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
# Tiled rasterizer
# ----------------------------------------------------------------------------------------------

def _pixel_basis(tile_size: int, device, dtype) -> Tensor:
    """[P, 6] quadratic basis (1, x, y, x^2, y^2, xy) of the P = tile_size^2 pixel centres of a
    tile, in coordinates relative to the tile centre (small numbers: better float32 accuracy)."""
    r = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - 0.5 * tile_size
    y, x = torch.meshgrid(r, r, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)


def _quadratic_coefficients(mx, my, conic, log_opac):
    """coef [..., 6] of s(x, y) = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 - log(o), dx = x - mx, in the
    basis (1, x, y, x^2, y^2, xy); alpha_raw = exp(-s). mx, my, log_opac [...]; conic [..., 3]."""
    a, b, c = conic.unbind(-1)
    ha, hc = 0.5 * a, 0.5 * c
    const = ha * mx * mx + hc * my * my + b * mx * my - log_opac
    return torch.stack([const, -(a * mx + b * my), -(c * my + b * mx), ha, hc, b], dim=-1)


@torch.no_grad()
def _min_sigma_in_box(mx, my, a, b, c, x0, x1, y0, y1):
    """Minimum over the box [x0, x1] x [y0, y1] of sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2,
    with dx = x - mx, dy = y - my (a convex quadratic). All arguments have the same shape.

    The minimiser lies on an edge that faces the centre (KKT: on an edge whose outward normal
    points away from the centre the gradient would push inwards). The two candidates: the line
    x = clamp(mx, x0, x1) minimised over y in the box, and the line y = clamp(my, y0, y1)
    minimised over x; both are points of the box, and the facing edges are among them (a centre
    inside the box gives 0)."""
    lo_x, hi_x, lo_y, hi_y = x0 - mx, x1 - mx, y0 - my, y1 - my
    dx = torch.clamp(torch.zeros_like(lo_x), lo_x, hi_x)
    dy = torch.clamp(torch.zeros_like(lo_y), lo_y, hi_y)
    # Along x = mx + dx: the best dy is -b dx / c (clamped); along y = my + dy: -b dy / a.
    dy1 = torch.clamp(b * dx / c, -hi_y, -lo_y).neg_()
    dx2 = torch.clamp(b * dy / a, -hi_x, -lo_x).neg_()
    two_sigma1 = dx * (a * dx + 2 * b * dy1) + c * dy1 * dy1
    two_sigma2 = dy * (c * dy + 2 * b * dx2) + a * dx2 * dx2
    return 0.5 * torch.minimum(two_sigma1, two_sigma2)


@torch.no_grad()
def _intersect(cam_ids, means2d, radii, depths, conics, opacities, width, height, tile_size,
               tile_width, tile_height):
    """Tile lists for the M visible (camera, Gaussian) pairs.

    A pair is listed in every tile its box (radii) overlaps and whose pixel centres its
    alpha >= 1/255 ellipse actually reaches (an exact box-ellipse test; gsplat uses the box).
    All inputs are per visible pair: cam_ids [M], means2d [M, 2], radii [M, 2], depths [M],
    conics [M, 3], opacities [M].
    Returns entry [I] (pair index of each intersection, sorted by tile then depth), tile [I]
    (camera-major tile index) and per_pair [M] (tiles per pair).
    """
    device, dtype = means2d.device, means2d.dtype
    M = cam_ids.numel()
    # Work in depth order, so that a stable sort by tile leaves each tile's list depth-sorted.
    by_depth = torch.argsort(depths)
    r = radii.to(dtype)
    lo = torch.floor((means2d - r) / tile_size).long()
    hi = torch.ceil((means2d + r) / tile_size).long()
    lo[:, 0].clamp_(0, tile_width), hi[:, 0].clamp_(0, tile_width)
    lo[:, 1].clamp_(0, tile_height), hi[:, 1].clamp_(0, tile_height)
    # One gather per intersection: [lo_x, lo_y, nx, tile offset of the camera].
    ints = torch.stack([lo[:, 0], lo[:, 1], hi[:, 0] - lo[:, 0],
                        cam_ids * (tile_height * tile_width)], dim=-1).index_select(0, by_depth)
    per_box = ints[:, 2] * (hi[:, 1] - lo[:, 1]).index_select(0, by_depth)  # [M], depth order
    n_box = int(per_box.sum())
    slot = torch.repeat_interleave(torch.arange(M, device=device), per_box, output_size=n_box)
    start = torch.cumsum(per_box, 0) - per_box
    local = torch.arange(n_box, device=device) - start.index_select(0, slot)
    lox, loy, nx, cam_off = ints.index_select(0, slot).unbind(-1)
    tx, ty = lox + local % nx, loy + local // nx
    # Exact test against the tile's pixel-centre box.
    floats = torch.cat([means2d, conics, torch.log(opacities / ALPHA_THRESHOLD)[:, None]], dim=-1)
    mx, my, a, b, c, reach = floats.index_select(0, by_depth).index_select(0, slot).unbind(-1)
    x0, y0 = (tx * tile_size).to(dtype) + 0.5, (ty * tile_size).to(dtype) + 0.5
    x1 = torch.clamp_max(x0 + (tile_size - 1), width - 0.5)
    y1 = torch.clamp_max(y0 + (tile_size - 1), height - 0.5)
    min_sigma = _min_sigma_in_box(mx, my, a, b, c, x0, x1, y0, y1)
    # alpha >= 1/255 <=> sigma <= reach = log(255 o); a little slack is harmless.
    hit = (min_sigma <= reach * (1 + 1e-4) + 1e-4).nonzero().squeeze(1)
    slot = slot.index_select(0, hit)
    tile = (cam_off + ty * tile_width + tx).index_select(0, hit)
    tile, order = torch.sort(tile.int(), stable=True)  # int32: a much faster (radix) sort
    tile = tile.long()
    entry = by_depth.index_select(0, slot.index_select(0, order))
    per_pair = torch.bincount(entry, minlength=M)
    return entry, tile, per_pair


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing of T tiles of P pixels over their depth-sorted Gaussian lists.

    coef [I + 1, 6]: per intersection, the coefficients of ``s = sigma - log(opacity)`` in the
    tile's pixel basis (``alpha_raw = exp(-s)``, ``s = basis @ coef``); row I is padding (alpha 0).
    feats [I + 1, D]. basis [P, 6]. starts, counts [T] (long): each tile's range of rows.
    block: Gaussians composited per step.
    Returns [T, D + 1, P]: composited features and, last, the accumulated alpha.

    Gaussians are taken ``block`` at a time per tile, carrying each pixel's transmittance; a tile
    leaves the batch once all its pixels are done (transmittance <= 1e-4) or its list is
    exhausted, so opaque surfaces cost only the Gaussians in front of them and skewed counts cost
    no padding. Intermediates are laid out [P, A, k] (A active tiles): one GEMM gives s (and,
    backward, the coefficient gradients) and the scans run along the innermost axis.
    Transmittance is a cumulative product and s is clamped before the exp, to avoid denormals
    (very slow on CPUs). The backward is written by hand: autograd over the dozen element-wise
    ops is several times slower and keeps every intermediate alive.
    """

    @staticmethod
    def forward(ctx, coef, feats, basis, starts, counts, block):
        T, P, D1 = starts.numel(), basis.shape[0], feats.shape[-1] + 1
        I = coef.shape[0] - 1  # padding row
        dev, dt = coef.device, coef.dtype
        feats1 = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)  # [I + 1, D + 1]
        coef_neg = coef.neg()
        out = torch.zeros(T, D1, P, dtype=dt, device=dev)
        carry = torch.ones(P, T, dtype=dt, device=dev)  # transmittance so far
        active = torch.arange(T, device=dev)[counts > 0]
        K = int(counts.max()) if T else 0
        blocks = []
        for k0 in range(0, K, block):
            if active.numel() == 0:
                break
            kb, A = min(block, K - k0), active.numel()
            ks = torch.arange(k0, k0 + kb, device=dev)
            rows = starts[active, None] + ks  # [A, kb]
            rows = torch.where(ks < counts[active, None], rows, torch.full_like(rows, I))
            flat_rows = rows.view(-1)
            alpha = torch.mm(basis, coef_neg.index_select(0, flat_rows).t()).view(P, A, kb)  # -s
            alpha = alpha.clamp_min_(-30.0).exp_().clamp_max_(ALPHA_MAX)
            clamped = bool(alpha.max() >= ALPHA_MAX)
            torch.nn.functional.threshold_(alpha, ALPHA_THRESHOLD, 0.0)  # drop alpha < 1/255
            # trans_ext[..., k] = carry * prod_{j < k} (1 - alpha_j): transmittance before k.
            trans_ext = torch.empty(P, A, kb + 1, dtype=dt, device=dev)
            trans_ext[..., 0] = carry.index_select(1, active)
            torch.neg(alpha, out=trans_ext[..., 1:]).add_(1.0)
            trans_ext.cumprod_(dim=2)
            after = trans_ext[..., kb]
            if bool((after <= T_MIN).any()):
                # A pixel is done once transmittance would fall to <= 1e-4 (exclusive, as
                # gsplat): drop that Gaussian and everything behind it.
                alpha.masked_fill_(trans_ext[..., 1:] <= T_MIN, 0.0)
                after = after.masked_fill(after <= T_MIN, 0.0)
            carry.index_copy_(1, active, after)
            trans = trans_ext[..., :kb]
            f = feats1.index_select(0, flat_rows).view(A, kb, D1)
            # [A, D + 1, P]: this orientation of the small GEMMs is ~4x faster than [A, P, D + 1].
            weights = (alpha * trans).permute(1, 2, 0)  # [A, kb, P]
            out.index_add_(0, active, torch.bmm(f.transpose(1, 2), weights))
            blocks.append((active, flat_rows, alpha, trans, f, clamped))
            live = (after > 0).any(dim=0) & (counts[active] > k0 + kb)
            active = active[live]
        ctx.blocks = blocks
        ctx.rows = I + 1
        ctx.save_for_backward(basis)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (basis,) = ctx.saved_tensors
        T, D1, P = grad_out.shape
        dev, dt = basis.device, basis.dtype
        grad_out = grad_out.contiguous()
        grad_coef = torch.zeros(ctx.rows, 6, dtype=dt, device=dev)
        grad_feats = torch.zeros(ctx.rows, D1, dtype=dt, device=dev)
        basis_t = basis.t().contiguous()  # [6, P]
        later = torch.zeros(P, T, dtype=dt, device=dev)  # sum over later blocks of v w
        for active, rows, alpha, trans, f, clamped in reversed(ctx.blocks):
            A, kb = f.shape[:2]
            g = grad_out.index_select(0, active)  # [A, D + 1, P]
            v = torch.bmm(g.transpose(1, 2), f.transpose(1, 2))  # dL/dw [A, P, kb]
            v = v.transpose(0, 1).contiguous()  # [P, A, kb]
            weights = alpha * trans
            grad_f = torch.bmm(g, weights.transpose(0, 1))  # [A, D + 1, kb]
            grad_feats.index_add_(0, rows, grad_f.transpose(1, 2).reshape(-1, D1))
            suffix = weights.mul_(v).cumsum_(dim=2)
            total = suffix[..., -1].clone()  # [P, A]
            suffix.neg_().add_((total + later.index_select(1, active))[..., None])  # j > k
            later.index_add_(1, active, total)
            suffix.div_(torch.rsub(alpha, 1.0))
            # dL/dalpha = v T - suffix / (1 - alpha); alpha = exp(-s): dL/ds = -alpha dL/dalpha.
            q = v.mul_(trans).sub_(suffix).mul_(alpha)
            if clamped:
                q.masked_fill_(alpha >= ALPHA_MAX, 0.0)  # no gradient through the clamp (gsplat)
            # [6, A kb] then transposed: ~7x faster than the [A kb, 6] orientation of this GEMM.
            grad_coef.index_add_(0, rows, torch.mm(basis_t, q.view(P, A * kb)).t().neg_())
        return grad_coef, grad_feats[:, :-1], None, None, None, None


def rasterize_torch(
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
    """Pure-torch tiled 3DGS rasterizer with gsplat.rasterization's interface (packed=False).

    Args:
        means [N, 3], quats [N, 4] (wxyz, need not be normalised), scales [N, 3] (linear),
        opacities [N] (in [0, 1]), colors [N, D] or [C, N, D] (post-activation) or SH
        coefficients [N, K, 3] / [C, N, K, 3] when sh_degree is given.
        viewmats [C, 4, 4] world-to-camera (OpenCV axes), Ks [C, 3, 3]. backgrounds [C, D].
        render_mode: "RGB", "D", "ED", "RGB+D" or "RGB+ED" (depth appended as the last channel).
        tile_size: does not change the image; on CPU 8 is usually fastest (16 is gsplat's).

    Returns:
        render_colors [C, H, W, D (+1 with depth)], render_alphas [C, H, W, 1], meta (gsplat's
        keys: "radii" [C, N, 2] int32, "means2d" [C, N, 2] with retained grad, "depths" [C, N],
        "conics" [C, N, 3], "opacities" [C, N], "width", "height", "n_cameras",
        "gaussian_ids" None, "tiles_per_gauss" [C, N], "flatten_ids" [I], "isect_offsets"
        [C, th, tw], ...).

    Each visible Gaussian is listed in the tiles it reaches, each tile's list is sorted by depth,
    and all tiles are composited together, a block of Gaussians at a time (_CompositeTiles).
    """
    assert render_mode in RENDER_MODES, render_mode
    N, C = means.shape[0], viewmats.shape[0]
    _check_colors(colors, N, C, sh_degree)
    device, dtype = means.device, means.dtype
    radii, means2d, depths, conics, opac_cn = _project(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    meta = _meta(radii, means2d, depths, conics, opac_cn, width, height, tile_size, C)
    tw, th = meta["tile_width"], meta["tile_height"]
    n_tiles = C * th * tw

    # Visible (camera, Gaussian) pairs and their tile lists (no grad).
    with torch.no_grad():
        cam_ids, g_ids = (radii > 0).all(dim=-1).nonzero(as_tuple=True)  # [M]
        M = cam_ids.numel()
        entry, tile, per_pair = _intersect(
            cam_ids, means2d.detach()[cam_ids, g_ids], radii[cam_ids, g_ids],
            depths.detach()[cam_ids, g_ids], conics.detach()[cam_ids, g_ids],
            opac_cn.detach()[cam_ids, g_ids], width, height, tile_size, tw, th)
        tile_counts = torch.bincount(tile, minlength=n_tiles)  # [n_tiles]
        tile_starts = torch.cumsum(tile_counts, 0) - tile_counts
        tiles_per_gauss = torch.zeros(C, N, dtype=torch.int32, device=device)
        tiles_per_gauss[cam_ids, g_ids] = per_pair.int()
        meta["tiles_per_gauss"] = tiles_per_gauss
        meta["flatten_ids"] = (cam_ids * N + g_ids)[entry].int()
        meta["isect_offsets"] = tile_starts.reshape(C, th, tw).int()
        tix = torch.arange(n_tiles, device=device)
        centres = torch.stack([tix % tw, (tix // tw) % th], dim=-1).to(dtype)
        centres = (centres + 0.5) * tile_size  # [n_tiles, 2] tile centres in pixels

    # Per intersection quantities (with grad), plus one padding row.
    feats = _features(render_mode, _colors_at(colors, sh_degree, means, viewmats, cam_ids, g_ids),
                      depths.reshape(-1).index_select(0, cam_ids * N + g_ids))  # [M, D']
    D = feats.shape[-1]
    pair_flat = (cam_ids * N + g_ids).index_select(0, entry)  # [I] into C * N
    mc = torch.cat([means2d, conics], dim=-1).reshape(C * N, 5).index_select(0, pair_flat)
    local = mc[:, :2] - centres.index_select(0, tile)  # [I, 2] tile-local means
    log_opac = torch.log(opacities.index_select(0, g_ids.index_select(0, entry)))  # >= log(1/255)
    coef = _quadratic_coefficients(local[:, 0], local[:, 1], mc[:, 2:], log_opac)  # [I, 6]
    coef = torch.cat([coef, coef.new_tensor([[1e4, 0, 0, 0, 0, 0]])], dim=0)
    feats = torch.cat([feats.index_select(0, entry), feats.new_zeros(1, D)], dim=0)
    basis = _pixel_basis(tile_size, device, dtype)

    P = tile_size * tile_size
    per_call = max(1, _MAX_STEP_ELEMENTS // (_BLOCK * P))
    if n_tiles <= per_call:
        tiles_out = _CompositeTiles.apply(coef, feats, basis, tile_starts, tile_counts, _BLOCK)
    else:  # batches of tiles with similar counts (bounded memory per step)
        order = torch.argsort(tile_counts, descending=True)
        outs = [_CompositeTiles.apply(coef, feats, basis, tile_starts[o], tile_counts[o], _BLOCK)
                for o in order.split(per_call)]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n_tiles, device=device)
        tiles_out = torch.cat(outs, dim=0)[inverse]
    if M == 0 and means2d.requires_grad:
        tiles_out = tiles_out + 0.0 * means2d.sum()  # keep the graph connected: nothing visible
    img = tiles_out.reshape(C, th, tw, D + 1, tile_size, tile_size)
    img = img.permute(0, 1, 4, 2, 5, 3).reshape(C, th * tile_size, tw * tile_size, D + 1)
    img = img[:, :height, :width]
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
    """All-pixels reference for ``rasterize_torch`` (same arguments and outputs): every Gaussian
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
            chunks.append(torch.utils.checkpoint.checkpoint(_composite_dense, *args,
                                                            use_reentrant=False))
        else:
            chunks.append(_composite_dense(*args))
    img = torch.cat(chunks, dim=1).reshape(C, height, width, D + 1)
    render, render_alphas = img[..., :D], img[..., D:]
    render = _finish(render, render_alphas, backgrounds, render_mode)
    return render, render_alphas, meta


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

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
    backend: "auto" (gsplat's CUDA kernels for CUDA tensors, else "torch"), "torch" (tiled,
    pure torch), "dense" (reference) or "gsplat".
    Returns RenderOutput with rgb [B, 3, H, W], alpha [B, 1, H, W], depth [B, 1, H, W] (expected
    depth, 0 where alpha is 0), normal None, info = the rasterizer's meta (for DefaultStrategy).
    """
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    viewmats, Ks = cameras.viewmats().to(means), cameras.intrinsics().to(means)
    B = viewmats.shape[0]
    backgrounds = background.to(means).reshape(1, 3).expand(B, 3)
    kwargs = dict(backgrounds=backgrounds, sh_degree=sh_degree, render_mode="RGB+ED")
    size = (cameras.width, cameras.height)
    if backend == "gsplat":
        from gsplat import rasterization
        render, alphas, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks,
                                             *size, packed=False, **kwargs)
    elif backend == "torch":
        render, alphas, meta = rasterize_torch(means, quats, scales, opacities, colors, viewmats,
                                               Ks, *size, tile_size=CPU_TILE_SIZE, **kwargs)
    elif backend == "dense":
        render, alphas, meta = rasterize_dense(means, quats, scales, opacities, colors, viewmats,
                                               Ks, *size, **kwargs)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()  # for DefaultStrategy (rasterize_torch does it already)
    rgb = render[..., :3].permute(0, 3, 1, 2)
    alpha = alphas.permute(0, 3, 1, 2)
    depth = torch.where(alpha > 0, render[..., 3:4].permute(0, 3, 1, 2), torch.zeros_like(alpha))
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=None, info=meta)
