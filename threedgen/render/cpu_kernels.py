"""Compiled CPU kernels (numba) for the hot loops of the CPU renderers: the Gaussian rasterizer
and the NeRF / triplane grid sampling.

Why: gsplat's and nerfacc's kernels are CUDA-only; a pure-torch rasterizer spends most of a CPU
step in the overhead of hundreds of small ops (projection, tile binning, a compositing loop over
blocks of Gaussians) rather than in arithmetic, and torch's CPU grid_sample backward is serial.
numba compiles these loops to machine code from its wheel alone: no compiler and no build step
at install. The first call in a fresh environment compiles (seconds); the result is cached on
disk (``cache=True``) for later processes.

The kernels take and fill numpy arrays (float32 or float64: numba compiles one version per
dtype, so gradcheck in double works); the autograd Functions that call them are in
``render/gaussians.py`` (following gsplat 1.5.3's CUDA kernels, see its docstring) and
``render/grids.py`` (following ``F.grid_sample``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numba
import numpy as np
import torch
from numba import njit, prange

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel is done once its transmittance would drop to <= 1e-4
EXTENT_MAX = 3.33  # gsplat's cap on a Gaussian's extent, in standard deviations


@contextmanager
def threads():
    """Around each kernel launch: numba's parallel loops run on as many threads as torch uses.

    numba's OpenMP pool shares torch's libgomp, and a launch resets its thread count to the
    pool's size, so afterwards torch's own ops ran on more threads than asked for (and gave
    other float results: a seeded run stopped reproducing); torch's count is put back here."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's numpy view (no copy when contiguous), detached."""
    return t.detach().contiguous().numpy()


# ----------------------------------------------------------------------------------------------
# Projection: EWA splatting of N Gaussians into C pinhole cameras. Scalar code throughout (small
# numpy temporaries inside the loops would be heap allocations). Symmetric 3x3 matrices are
# 6-tuples (s00, s01, s02, s11, s12, s22); 3x3 matrices are 9-tuples, row-major.
# ----------------------------------------------------------------------------------------------

@njit(cache=True)
def _rotation(w, x, y, z):
    """Unit quaternion (w, x, y, z) -> rotation matrix (9-tuple)."""
    return (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))


@njit(cache=True)
def _unit_quat(quats, n):
    """(w, x, y, z) / |quat| and |quat| (floored at 1e-12, as F.normalize)."""
    w, x, y, z = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
    norm = max(math.sqrt(w * w + x * x + y * y + z * z), 1e-12)
    return w / norm, x / norm, y / norm, z / norm, norm


@njit(cache=True)
def _conj(A, S):
    """A S A^T for a 3x3 A (9-tuple) and symmetric S (6-tuple) -> symmetric 6-tuple."""
    s00, s01, s02, s11, s12, s22 = S
    # rows of A S
    b00 = A[0] * s00 + A[1] * s01 + A[2] * s02
    b01 = A[0] * s01 + A[1] * s11 + A[2] * s12
    b02 = A[0] * s02 + A[1] * s12 + A[2] * s22
    b10 = A[3] * s00 + A[4] * s01 + A[5] * s02
    b11 = A[3] * s01 + A[4] * s11 + A[5] * s12
    b12 = A[3] * s02 + A[4] * s12 + A[5] * s22
    b20 = A[6] * s00 + A[7] * s01 + A[8] * s02
    b21 = A[6] * s01 + A[7] * s11 + A[8] * s12
    b22 = A[6] * s02 + A[7] * s12 + A[8] * s22
    return (b00 * A[0] + b01 * A[1] + b02 * A[2], b00 * A[3] + b01 * A[4] + b02 * A[5],
            b00 * A[6] + b01 * A[7] + b02 * A[8], b10 * A[3] + b11 * A[4] + b12 * A[5],
            b10 * A[6] + b11 * A[7] + b12 * A[8], b20 * A[6] + b21 * A[7] + b22 * A[8])


@njit(cache=True)
def _world_covariance(quats, scales, n):
    """Sigma = M M^T with M = R(q) diag(s): Sigma (6-tuple), M (9-tuple), R (9-tuple), the unit
    quaternion and its norm."""
    w, x, y, z, norm = _unit_quat(quats, n)
    R = _rotation(w, x, y, z)
    s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
    M = (R[0] * s0, R[1] * s1, R[2] * s2, R[3] * s0, R[4] * s1, R[5] * s2,
         R[6] * s0, R[7] * s1, R[8] * s2)
    S = (M[0] * M[0] + M[1] * M[1] + M[2] * M[2], M[0] * M[3] + M[1] * M[4] + M[2] * M[5],
         M[0] * M[6] + M[1] * M[7] + M[2] * M[8], M[3] * M[3] + M[4] * M[4] + M[5] * M[5],
         M[3] * M[6] + M[4] * M[7] + M[5] * M[8], M[6] * M[6] + M[7] * M[7] + M[8] * M[8])
    return S, M, R, (w, x, y, z), norm


@njit(cache=True)
def _view(viewmats, c):
    """World-to-camera rotation (9-tuple) and translation of camera c."""
    V = viewmats[c]
    return ((V[0, 0], V[0, 1], V[0, 2], V[1, 0], V[1, 1], V[1, 2], V[2, 0], V[2, 1], V[2, 2]),
            (V[0, 3], V[1, 3], V[2, 3]))


@njit(cache=True)
def _to_camera(W, t, means, n):
    mx, my, mz = means[n, 0], means[n, 1], means[n, 2]
    return (W[0] * mx + W[1] * my + W[2] * mz + t[0], W[3] * mx + W[4] * my + W[5] * mz + t[1],
            W[6] * mx + W[7] * my + W[8] * mz + t[2])


@njit(cache=True)
def _jacobian(tx, ty, tz, K, width, height):
    """The EWA Jacobian's non-zero entries (j00, j02, j11, j12) at the camera-frame mean, with
    gsplat's clamp of x/z and y/z to 1.3x the field of view, and whether x and y were free
    (unclamped)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_xp = (width - cx) / fx + 0.15 * width / fx
    lim_xn = cx / fx + 0.15 * width / fx
    lim_yp = (height - cy) / fy + 0.15 * height / fy
    lim_yn = cy / fy + 0.15 * height / fy
    u, v = tx / tz, ty / tz
    free_x, free_y = -lim_xn <= u <= lim_xp, -lim_yn <= v <= lim_yp
    txc = tz * min(max(u, -lim_xn), lim_xp)
    tyc = tz * min(max(v, -lim_yn), lim_yp)
    return fx / tz, -fx * txc / (tz * tz), fy / tz, -fy * tyc / (tz * tz), txc, tyc, free_x, free_y


@njit(cache=True)
def _cov2d(j00, j02, j11, j12, Sc, eps2d):
    """(a, b, c) of J Sc J^T + eps2d I."""
    s00, s01, s02, s11, s12, s22 = Sc
    a = j00 * (j00 * s00 + 2 * j02 * s02) + j02 * j02 * s22 + eps2d
    c = j11 * (j11 * s11 + 2 * j12 * s12) + j12 * j12 * s22 + eps2d
    b = j00 * j11 * s01 + j00 * j12 * s02 + j02 * j11 * s12 + j02 * j12 * s22
    return a, b, c


@njit(parallel=True, cache=True)
def project_forward(means, quats, scales, opacities, viewmats, Ks, width, height, near, far,
                    eps2d, means2d, depths, conics, radii):
    """means [N, 3], quats [N, 4] (wxyz, any norm), scales [N, 3], opacities [N], viewmats
    [C, 4, 4], Ks [C, 3, 3] -> fills means2d [C, N, 2], depths [C, N] (camera z), conics
    [C, N, 3] (a, b, c of the inverse 2D covariance: sigma = 0.5 (a dx^2 + c dy^2) + b dx dy)
    and radii [C, N, 2] (int32, 0 = culled: outside (near, far), degenerate, opacity < 1/255
    or off the image). Culled pairs get the torch reference's finite stand-ins."""
    C, N = viewmats.shape[0], means.shape[0]
    for n in prange(N):
        S, _, _, _, _ = _world_covariance(quats, scales, n)
        extend = min(EXTENT_MAX, math.sqrt(2.0 * math.log(max(opacities[n], ALPHA_THRESHOLD)
                                                          / ALPHA_THRESHOLD)))
        for c in range(C):
            K = Ks[c]
            W, t = _view(viewmats, c)
            tx, ty, tz = _to_camera(W, t, means, n)
            depths[c, n] = tz
            in_range = near < tz < far
            if not in_range:  # a harmless stand-in position, as the torch reference's
                tx, ty, tz = 0.0, 0.0, 1.0
            j00, j02, j11, j12, _, _, _, _ = _jacobian(tx, ty, tz, K, width, height)
            a, b, c2 = _cov2d(j00, j02, j11, j12, _conj(W, S), eps2d)
            det = a * c2 - b * b
            det_safe = det if det > 0 else 1.0
            mx = (K[0, 0] * tx + K[0, 1] * ty) / tz + K[0, 2]
            my = (K[1, 0] * tx + K[1, 1] * ty) / tz + K[1, 2]
            means2d[c, n, 0], means2d[c, n, 1] = mx, my
            conics[c, n, 0] = c2 / det_safe
            conics[c, n, 1] = -b / det_safe
            conics[c, n, 2] = a / det_safe
            rx = math.ceil(extend * math.sqrt(max(a, 0.0)))
            ry = math.ceil(extend * math.sqrt(max(c2, 0.0)))
            visible = (in_range and det > 0 and opacities[n] >= ALPHA_THRESHOLD and rx > 0
                       and ry > 0 and mx + rx > 0 and mx - rx < width and my + ry > 0
                       and my - ry < height)
            radii[c, n, 0] = int(rx) if visible else 0
            radii[c, n, 1] = int(ry) if visible else 0


@njit(parallel=True, cache=True)
def project_backward(means, quats, scales, viewmats, Ks, width, height, eps2d, radii,
                     g_means2d, g_depths, g_conics, g_means, g_quats, g_scales):
    """Gradients of ``project_forward`` for the visible pairs (radii > 0: the only ones a render
    uses), accumulated in place into g_means [N, 3], g_quats [N, 4], g_scales [N, 3]. A thread
    owns whole Gaussians (the camera loop is inside): no write races."""
    C, N = viewmats.shape[0], means.shape[0]
    for n in prange(N):
        S, M, R, q, norm = _world_covariance(quats, scales, n)
        gm0 = gm1 = gm2 = 0.0  # world mean
        v00 = v01 = v02 = v11 = v12 = v22 = 0.0  # dL/dSigma (world), summed over cameras
        for c in range(C):
            if radii[c, n, 0] == 0:
                continue
            K = Ks[c]
            fx, fy = K[0, 0], K[1, 1]
            W, t = _view(viewmats, c)
            tx, ty, tz = _to_camera(W, t, means, n)
            Sc = _conj(W, S)
            j00, j02, j11, j12, txc, tyc, free_x, free_y = _jacobian(tx, ty, tz, K, width, height)
            a, b, c2 = _cov2d(j00, j02, j11, j12, Sc, eps2d)
            # conic (c, -b, a) / det -> dL/d(a, b, c).
            det = a * c2 - b * b
            d2 = det * det
            gk0, gk1, gk2 = g_conics[c, n, 0], g_conics[c, n, 1], g_conics[c, n, 2]
            ga = (-c2 * c2 * gk0 + b * c2 * gk1 - b * b * gk2) / d2
            gb = (2 * b * c2 * gk0 - (det + 2 * b * b) * gk1 + 2 * a * b * gk2) / d2
            gc = (-b * b * gk0 + a * b * gk1 - a * a * gk2) / d2
            hb = 0.5 * gb  # dL/dcov01 = dL/dcov10
            # cov2d = J Sc J^T: dL/dSc = J^T G J, dL/dJ = 2 G J Sc (G, Sc symmetric).
            s00, s01, s02, s11, s12, s22 = Sc
            gS = (ga * j00 * j00, hb * j00 * j11, ga * j00 * j02 + hb * j00 * j12,
                  gc * j11 * j11, hb * j02 * j11 + gc * j11 * j12,
                  ga * j02 * j02 + gb * j02 * j12 + gc * j12 * j12)
            js00, js01, js02 = j00 * s00 + j02 * s02, j00 * s01 + j02 * s12, j00 * s02 + j02 * s22
            js10, js11, js12 = j11 * s01 + j12 * s02, j11 * s11 + j12 * s12, j11 * s12 + j12 * s22
            gj00 = 2 * (ga * js00 + hb * js10)
            gj02 = 2 * (ga * js02 + hb * js12)
            gj11 = 2 * (hb * js01 + gc * js11)
            gj12 = 2 * (hb * js02 + gc * js12)
            # Camera-frame mean: means2d, depth and the Jacobian.
            gmx, gmy = g_means2d[c, n, 0], g_means2d[c, n, 1]
            px = K[0, 0] * tx + K[0, 1] * ty
            py = K[1, 0] * tx + K[1, 1] * ty
            tz2, tz3 = tz * tz, tz * tz * tz
            gx = (gmx * K[0, 0] + gmy * K[1, 0]) / tz
            gy = (gmx * K[0, 1] + gmy * K[1, 1]) / tz
            gz = g_depths[c, n] - (gmx * px + gmy * py) / tz2 - (fx * gj00 + fy * gj11) / tz2
            # j02 = -fx txc / tz^2, txc = tx where free, tz * limit where clamped.
            if free_x:
                gx -= fx / tz2 * gj02
                gz += 2 * fx * txc / tz3 * gj02
            else:
                gz += fx * txc / tz3 * gj02
            if free_y:
                gy -= fy / tz2 * gj12
                gz += 2 * fy * tyc / tz3 * gj12
            else:
                gz += fy * tyc / tz3 * gj12
            gm0 += W[0] * gx + W[3] * gy + W[6] * gz  # W^T g
            gm1 += W[1] * gx + W[4] * gy + W[7] * gz
            gm2 += W[2] * gx + W[5] * gy + W[8] * gz
            # Sc = W Sigma W^T: dL/dSigma = W^T gS W.
            V = _conj((W[0], W[3], W[6], W[1], W[4], W[7], W[2], W[5], W[8]), gS)
            v00 += V[0]
            v01 += V[1]
            v02 += V[2]
            v11 += V[3]
            v12 += V[4]
            v22 += V[5]
        g_means[n, 0] += gm0
        g_means[n, 1] += gm1
        g_means[n, 2] += gm2
        # Sigma = M M^T: dL/dM = 2 V M; M = R diag(s).
        gM = (2 * (v00 * M[0] + v01 * M[3] + v02 * M[6]), 2 * (v00 * M[1] + v01 * M[4] + v02 * M[7]),
              2 * (v00 * M[2] + v01 * M[5] + v02 * M[8]), 2 * (v01 * M[0] + v11 * M[3] + v12 * M[6]),
              2 * (v01 * M[1] + v11 * M[4] + v12 * M[7]), 2 * (v01 * M[2] + v11 * M[5] + v12 * M[8]),
              2 * (v02 * M[0] + v12 * M[3] + v22 * M[6]), 2 * (v02 * M[1] + v12 * M[4] + v22 * M[7]),
              2 * (v02 * M[2] + v12 * M[5] + v22 * M[8]))
        for j in range(3):
            g_scales[n, j] += gM[j] * R[j] + gM[3 + j] * R[3 + j] + gM[6 + j] * R[6 + j]
        s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
        r00, r01, r02 = gM[0] * s0, gM[1] * s1, gM[2] * s2  # dL/dR
        r10, r11, r12 = gM[3] * s0, gM[4] * s1, gM[5] * s2
        r20, r21, r22 = gM[6] * s0, gM[7] * s1, gM[8] * s2
        w, x, y, z = q
        dw = 2 * (-z * r01 + y * r02 + z * r10 - x * r12 - y * r20 + x * r21)
        dx = 2 * (y * r01 + z * r02 + y * r10 - 2 * x * r11 - w * r12 + z * r20 + w * r21
                  - 2 * x * r22)
        dy = 2 * (-2 * y * r00 + x * r01 + w * r02 + x * r10 + z * r12 - w * r20 + z * r21
                  - 2 * y * r22)
        dz = 2 * (-2 * z * r00 - w * r01 + x * r02 + w * r10 - 2 * z * r11 + y * r12 + x * r20
                  + y * r21)
        dot = dw * w + dx * x + dy * y + dz * z  # through q = quat / |quat|
        g_quats[n, 0] += (dw - w * dot) / norm
        g_quats[n, 1] += (dx - x * dot) / norm
        g_quats[n, 2] += (dy - y * dot) / norm
        g_quats[n, 3] += (dz - z * dot) / norm


# ----------------------------------------------------------------------------------------------
# Tile binning
# ----------------------------------------------------------------------------------------------

@njit(cache=True)
def _min_sigma_in_box(mx, my, a, b, c, x0, x1, y0, y1):
    """Minimum over the box [x0, x1] x [y0, y1] of sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2
    (dx = x - mx, dy = y - my; a convex quadratic). The minimiser is the centre if inside, else
    on an edge facing the centre; both candidate lines through the clamped centre contain it:
    x = clamp(mx) minimised over y, and y = clamp(my) minimised over x."""
    dx = min(max(0.0, x0 - mx), x1 - mx)
    dy = min(max(0.0, y0 - my), y1 - my)
    dy1 = -min(max(b * dx / c, my - y1), my - y0)  # best dy along x = mx + dx
    dx2 = -min(max(b * dy / a, mx - x1), mx - x0)  # best dx along y = my + dy
    s1 = dx * (a * dx + 2 * b * dy1) + c * dy1 * dy1
    s2 = dy * (c * dy + 2 * b * dx2) + a * dx2 * dx2
    return 0.5 * min(s1, s2)


@njit(cache=True)
def _tile_box(means2d, radii, m, tile_size, tw, th):
    """The tiles pair m's box (radii) overlaps: tile columns [lo_x, hi_x), rows [lo_y, hi_y)."""
    mx, my, rx, ry = means2d[m, 0], means2d[m, 1], radii[m, 0], radii[m, 1]
    return (min(max(int(math.floor((mx - rx) / tile_size)), 0), tw),
            min(max(int(math.ceil((mx + rx) / tile_size)), 0), tw),
            min(max(int(math.floor((my - ry) / tile_size)), 0), th),
            min(max(int(math.ceil((my + ry) / tile_size)), 0), th))


@njit(parallel=True, cache=True)
def intersect(cam_ids, means2d, radii, conics, reach, by_depth, tile_size, tw, th, width,
              height, n_cameras):
    """Tile lists for M visible (camera, Gaussian) pairs (cam_ids, means2d [M, 2], radii [M, 2],
    conics [M, 3], reach [M] = log(255 o), by_depth [M] their order by depth) -> entries [I]
    (pair indices, grouped by camera-major tile, depth-sorted within a tile), tile_counts
    [n_cameras th tw] and per_pair [M] (tiles per pair).
    A pair is listed in the tiles its box overlaps and whose pixel-centre box its
    alpha >= 1/255 ellipse reaches (sigma <= reach, with a little slack; gsplat uses the box).
    The tests run in parallel over pairs; a counting sort over the pairs in depth order then
    groups the hits by tile."""
    M = cam_ids.shape[0]
    box = np.empty(M, dtype=np.int64)
    for m in prange(M):
        lo_x, hi_x, lo_y, hi_y = _tile_box(means2d, radii, m, tile_size, tw, th)
        box[m] = (hi_x - lo_x) * (hi_y - lo_y)
    box_start = np.cumsum(box) - box
    hits = np.empty(box.sum(), dtype=np.int64)  # each pair's hit tiles, from its box_start
    per_pair = np.zeros(M, dtype=np.int64)
    for m in prange(M):
        lo_x, hi_x, lo_y, hi_y = _tile_box(means2d, radii, m, tile_size, tw, th)
        mx, my = means2d[m, 0], means2d[m, 1]
        a, b, c = conics[m, 0], conics[m, 1], conics[m, 2]
        limit = reach[m] * (1 + 1e-4) + 1e-4
        k = box_start[m]
        for ty in range(lo_y, hi_y):
            y0 = ty * tile_size + 0.5
            y1 = min(y0 + tile_size - 1, height - 0.5)
            for tx in range(lo_x, hi_x):
                x0 = tx * tile_size + 0.5
                x1 = min(x0 + tile_size - 1, width - 0.5)
                if _min_sigma_in_box(mx, my, a, b, c, x0, x1, y0, y1) <= limit:
                    hits[k] = cam_ids[m] * th * tw + ty * tw + tx
                    k += 1
        per_pair[m] = k - box_start[m]
    tile_counts = np.zeros(n_cameras * th * tw, dtype=np.int64)
    for m in range(M):
        for k in range(box_start[m], box_start[m] + per_pair[m]):
            tile_counts[hits[k]] += 1
    fill = np.cumsum(tile_counts) - tile_counts
    entries = np.empty(per_pair.sum(), dtype=np.int64)
    for m in by_depth:
        for k in range(box_start[m], box_start[m] + per_pair[m]):
            entries[fill[hits[k]]] = m
            fill[hits[k]] += 1
    return entries, tile_counts, per_pair


# ----------------------------------------------------------------------------------------------
# Compositing: front to back per pixel over its tile's depth-sorted list
# ----------------------------------------------------------------------------------------------

@njit(cache=True)
def _footprint(means2d, conics, reach, m, x0, x1, y0, y1):
    """The pixels of the tile [x0, x1) x [y0, y1) inside the bounding box of pair m's
    sigma <= reach ellipse (a pixel-inclusive range per axis, empty when lo > hi). With
    Q = [[a, b], [b, c]] the conic, the ellipse's half-widths are sqrt(2 r (Q^-1)_ii)."""
    a, b, c = conics[m, 0], conics[m, 1], conics[m, 2]
    r2 = 2.0 * (reach[m] + 1e-3) / (a * c - b * b)
    hx, hy = math.sqrt(r2 * c) + 1e-3, math.sqrt(r2 * a) + 1e-3
    mx, my = means2d[m, 0] - 0.5, means2d[m, 1] - 0.5  # pixel px's centre is px + 0.5
    return (max(x0, int(math.ceil(mx - hx))), min(x1 - 1, int(math.floor(mx + hx))),
            max(y0, int(math.ceil(my - hy))), min(y1 - 1, int(math.floor(my + hy))))


@njit(cache=True)
def _alpha(means2d, conics, opacities, reach, m, x, y):
    """(alpha, unclamped alpha, dx, dy) of pair m at pixel centre (x, y); alpha 0 where it is
    below 1/255 (or sigma < 0). reach [M] = log(255 o) rejects most misses before the exp."""
    dx, dy = x - means2d[m, 0], y - means2d[m, 1]
    sigma = 0.5 * (conics[m, 0] * dx * dx + conics[m, 2] * dy * dy) + conics[m, 1] * dx * dy
    if sigma < 0 or sigma > reach[m] + 1e-3:
        return 0.0, 0.0, dx, dy
    raw = opacities[m] * math.exp(-sigma)
    alpha = min(ALPHA_MAX, raw)
    return (alpha if alpha >= ALPHA_THRESHOLD else 0.0), raw, dx, dy


@njit(parallel=True, cache=True)
def composite_forward(means2d, conics, opacities, reach, feats, entries, starts, counts,
                      tile_size, tw, th, out, final_trans, ends):
    """Per visible pair m: means2d [M, 2], conics [M, 3], opacities [M], reach [M]
    (log(255 o)), feats [M, D]; tile lists (entries [I] into the pairs, starts/counts
    [C th tw]) -> out [C, H, W, D + 1] (features, then accumulated alpha), filled in place,
    and for the backward each pixel's final transmittance final_trans [C, H, W] (float64) and
    ends [C, H, W] (one past the last entry it composited).
    alpha = min(0.999, o exp(-sigma)), dropped below 1/255; a pixel stops before the Gaussian
    that would bring its transmittance to <= 1e-4.
    A tile walks its list once, each Gaussian over the tile pixels its ellipse's box covers,
    and stops when all its pixels are done."""
    H, W, D = out.shape[1], out.shape[2], feats.shape[1]
    for tile in prange(starts.shape[0]):
        cam, ty, tx = tile // (th * tw), (tile // tw) % th, tile % tw
        x0, y0 = tx * tile_size, ty * tile_size
        x1, y1 = min(x0 + tile_size, W), min(y0 + tile_size, H)
        trans = np.ones((y1 - y0, x1 - x0))
        pixel = np.zeros((y1 - y0, x1 - x0, D + 1))  # features, then alpha
        end = np.full((y1 - y0, x1 - x0), starts[tile])
        done = np.zeros((y1 - y0, x1 - x0), dtype=np.bool_)
        n_done = 0
        for k in range(starts[tile], starts[tile] + counts[tile]):
            m = entries[k]
            lo_x, hi_x, lo_y, hi_y = _footprint(means2d, conics, reach, m, x0, x1, y0, y1)
            for py in range(lo_y, hi_y + 1):
                for px in range(lo_x, hi_x + 1):
                    i, j = py - y0, px - x0
                    if done[i, j]:
                        continue
                    alpha, _, _, _ = _alpha(means2d, conics, opacities, reach, m, px + 0.5,
                                            py + 0.5)
                    if alpha == 0.0:
                        continue
                    t = trans[i, j]
                    nxt = t * (1.0 - alpha)
                    if nxt <= T_MIN:
                        done[i, j] = True
                        n_done += 1
                        continue
                    w = alpha * t
                    for d in range(D):
                        pixel[i, j, d] += w * feats[m, d]
                    pixel[i, j, D] += w
                    trans[i, j], end[i, j] = nxt, k + 1
            if n_done == done.size:
                break
        out[cam, y0:y1, x0:x1] = pixel
        final_trans[cam, y0:y1, x0:x1] = trans
        ends[cam, y0:y1, x0:x1] = end


@njit(parallel=True, cache=True)
def composite_backward(means2d, conics, opacities, reach, feats, entries, starts, final_trans,
                       ends, tile_size, tw, th, grad_out, g_geom, g_feats):
    """Gradients of ``composite_forward`` for grad_out [C, H, W, D + 1], per intersection (a
    tile's rows are its own, and one thread runs a tile: no write races): g_geom [I, 6] for
    (mean x, mean y, conic a, b, c, opacity), g_feats [I, D].
    Per pixel, back to front from its last contributor, with w_k = alpha_k T_k and
    v_k = grad . (f_k, 1): dL/dalpha_k = v_k T_k - sum_{j > k} w_j v_j / (1 - alpha_k), where
    T_k = T_{k+1} / (1 - alpha_k) (float64; alpha <= 0.999); no gradient where alpha is clamped
    at 0.999 (as gsplat)."""
    H, W, D = grad_out.shape[1], grad_out.shape[2], feats.shape[1]
    for tile in prange(starts.shape[0]):
        cam, ty, tx = tile // (th * tw), (tile // tw) % th, tile % tw
        x0, y0 = tx * tile_size, ty * tile_size
        x1, y1 = min(x0 + tile_size, W), min(y0 + tile_size, H)
        trans = final_trans[cam, y0:y1, x0:x1].copy()
        end = ends[cam, y0:y1, x0:x1]
        later = np.zeros((y1 - y0, x1 - x0))  # sum over j > k of w_j v_j
        gf = np.empty(D)
        for k in range(end.max() - 1, starts[tile] - 1, -1):
            m = entries[k]
            lo_x, hi_x, lo_y, hi_y = _footprint(means2d, conics, reach, m, x0, x1, y0, y1)
            a, b, c, o = conics[m, 0], conics[m, 1], conics[m, 2], opacities[m]
            g_mx = g_my = g_a = g_b = g_c = g_o = 0.0
            gf[:] = 0.0
            for py in range(lo_y, hi_y + 1):
                for px in range(lo_x, hi_x + 1):
                    i, j = py - y0, px - x0
                    if k >= end[i, j]:
                        continue
                    alpha, raw, dx, dy = _alpha(means2d, conics, opacities, reach, m, px + 0.5,
                                                py + 0.5)
                    if alpha == 0.0:
                        continue
                    g = grad_out[cam, py, px]
                    t = trans[i, j] / (1.0 - alpha)
                    trans[i, j] = t
                    w = alpha * t
                    v = g[D]
                    for d in range(D):
                        v += g[d] * feats[m, d]
                        gf[d] += w * g[d]
                    if raw < ALPHA_MAX:
                        g_alpha = v * t - later[i, j] / (1.0 - alpha)
                        gs = -alpha * g_alpha  # alpha = o exp(-sigma)
                        g_mx -= gs * (a * dx + b * dy)
                        g_my -= gs * (b * dx + c * dy)
                        g_a += gs * 0.5 * dx * dx
                        g_b += gs * dx * dy
                        g_c += gs * 0.5 * dy * dy
                        g_o += g_alpha * alpha / o
                    later[i, j] += w * v
            g_geom[k, 0], g_geom[k, 1], g_geom[k, 2] = g_mx, g_my, g_a
            g_geom[k, 3], g_geom[k, 4], g_geom[k, 5] = g_b, g_c, g_o
            for d in range(D):
                g_feats[k, d] = gf[d]


# ----------------------------------------------------------------------------------------------
# Grid sampling for the volume fields: trilinear (NeRF grid) and bilinear (triplane planes).
# torch's grid_sampler_*_backward runs serially on CPU and took most of a NeRF or triplane step.
# Gradients go to the grids only (the points are constants here); backward scatters into one
# grid per chunk of points (no write races), summed afterwards.
# ----------------------------------------------------------------------------------------------

@njit(cache=True)
def _corner(u, R):
    """Border-clamped coordinate u (in vertex units) -> (lower vertex, fraction)."""
    u = min(max(u, 0.0), R - 1.0)
    i = min(int(math.floor(u)), R - 2)
    return i, u - i


@njit(cache=True)
def _cell(points, m, aabb, R):
    """Point m's cell (i, j, k) of an R^3 vertex grid over the box and its fractions in it."""
    scale = (R - 1) / (2.0 * aabb)
    i, fx = _corner((points[m, 0] + aabb) * scale, R)
    j, fy = _corner((points[m, 1] + aabb) * scale, R)
    k, fz = _corner((points[m, 2] + aabb) * scale, R)
    return i, j, k, fx, fy, fz


# The 8-corner loops below are written out in both kernels: a shared tuple of weights indexed by
# corner made the NeRF render about 25% slower.
@njit(parallel=True, cache=True)
def trilinear_forward(grid, points, aabb, out):
    """grid [R, R, R, C] (vertex [i, j, k] at -aabb + 2 aabb (i, j, k) / (R - 1)), points
    [M, 3] -> out [M, C]: trilinear interpolation, points outside clamped to the box
    (grid_sample's align_corners=True, padding_mode="border")."""
    R, C = grid.shape[0], grid.shape[3]
    for m in prange(points.shape[0]):
        i, j, k, fx, fy, fz = _cell(points, m, aabb, R)
        for c in range(C):
            out[m, c] = 0.0
        for di in range(2):
            wx = fx if di else 1.0 - fx
            for dj in range(2):
                wy = fy if dj else 1.0 - fy
                for dk in range(2):
                    w = wx * wy * (fz if dk else 1.0 - fz)
                    for c in range(C):
                        out[m, c] += w * grid[i + di, j + dj, k + dk, c]


@njit(parallel=True, cache=True)
def trilinear_backward(points, aabb, grad_out, grad_grids):
    """dL/dgrid of ``trilinear_forward`` for grad_out [M, C]: chunk t of the points scatters
    into grad_grids[t] ([T, R, R, R, C], zeros); the caller sums over t."""
    T, R, C = grad_grids.shape[0], grad_grids.shape[1], grad_grids.shape[4]
    M = points.shape[0]
    for t in prange(T):
        g = grad_grids[t]
        for m in range(t * M // T, (t + 1) * M // T):
            i, j, k, fx, fy, fz = _cell(points, m, aabb, R)
            for di in range(2):
                wx = fx if di else 1.0 - fx
                for dj in range(2):
                    wy = fy if dj else 1.0 - fy
                    for dk in range(2):
                        w = wx * wy * (fz if dk else 1.0 - fz)
                        for c in range(C):
                            g[i + di, j + dj, k + dk, c] += w * grad_out[m, c]


PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # the triplane's xy, xz, yz planes


@njit(cache=True)
def _plane_taps(u, v, R):
    """Bilinear taps at plane coordinates (u -> columns, v -> rows, in pixel units) with zero
    padding (grid_sample's default): the lower row and column and the weights of the 2 x 2
    taps (w00 at [i, j], w01 at [i, j + 1], w10 at [i + 1, j], w11 at [i + 1, j + 1]). At an
    edge the taps move inside the plane with their weights; a tap outside gets weight 0."""
    j, i = int(math.floor(u)), int(math.floor(v))
    fu, fv = u - j, v - i
    a0, a1 = 1 - fu, fu  # column weights of j, j + 1
    b0, b1 = 1 - fv, fv  # row weights of i, i + 1
    if not (0 <= j and j + 1 < R):
        if j == -1:  # only column j + 1 = 0 is inside: it becomes the lower one
            j, a0, a1 = 0, a1, 0.0
        elif j == R - 1:  # only column j = R - 1 is inside: it becomes the upper one
            j, a0, a1 = R - 2, 0.0, a0
        else:
            j, a0, a1 = 0, 0.0, 0.0
    if not (0 <= i and i + 1 < R):
        if i == -1:
            i, b0, b1 = 0, b1, 0.0
        elif i == R - 1:
            i, b0, b1 = R - 2, 0.0, b0
        else:
            i, b0, b1 = 0, 0.0, 0.0
    return i, j, b0 * a0, b0 * a1, b1 * a0, b1 * a1


@njit(parallel=True, cache=True)
def triplane_forward(planes, points, aabb, out):
    """planes [3, R, R, C] (xy, xz, yz; pixel [i, j] at (first axis, second axis) =
    (-aabb + 2 aabb j / (R - 1), -aabb + 2 aabb i / (R - 1))), points [M, 3] -> out [M, C]:
    the sum of the three planes bilinearly sampled at the point's projections
    (grid_sample's align_corners=True, zero padding)."""
    R, C = planes.shape[1], planes.shape[3]
    scale = (R - 1) / (2.0 * aabb)
    for m in prange(points.shape[0]):
        for c in range(C):
            out[m, c] = 0.0
        for p in range(3):
            a0, a1 = PLANE_AXES[p]
            i, j, w00, w01, w10, w11 = _plane_taps((points[m, a0] + aabb) * scale,
                                                   (points[m, a1] + aabb) * scale, R)
            t0, t1 = planes[p, i], planes[p, i + 1]
            for c in range(C):
                out[m, c] += (w00 * t0[j, c] + w01 * t0[j + 1, c] + w10 * t1[j, c]
                              + w11 * t1[j + 1, c])


@njit(parallel=True, cache=True)
def triplane_backward(points, aabb, grad_out, grad_planes):
    """dL/dplanes of ``triplane_forward`` for grad_out [M, C]: chunk t of the points scatters
    into grad_planes[t] ([T, 3, R, R, C], zeros); the caller sums over t."""
    T, R, C = grad_planes.shape[0], grad_planes.shape[2], grad_planes.shape[4]
    M = points.shape[0]
    scale = (R - 1) / (2.0 * aabb)
    for t in prange(T):
        g = grad_planes[t]
        for m in range(t * M // T, (t + 1) * M // T):
            for p in range(3):
                a0, a1 = PLANE_AXES[p]
                i, j, w00, w01, w10, w11 = _plane_taps((points[m, a0] + aabb) * scale,
                                                       (points[m, a1] + aabb) * scale, R)
                t0, t1 = g[p, i], g[p, i + 1]
                for c in range(C):
                    go = grad_out[m, c]
                    t0[j, c] += w00 * go
                    t0[j + 1, c] += w01 * go
                    t1[j, c] += w10 * go
                    t1[j + 1, c] += w11 * go
