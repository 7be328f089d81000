"""An explicit radiance field: dense density + colour grids inside [-aabb, aabb]^3.

Values live on the R^3 vertices of a regular grid spanning the box (vertex 0 at -aabb, vertex R-1
at +aabb, indexed [x, y, z]) and are trilinearly interpolated by ``render.grids.sample_grid``
(numba kernels on CPU, ``F.grid_sample`` on CUDA). When the points require grad (normals, for the
orientation regulariser, are the density's spatial gradient and need d(normal)/d(grid)), the
interpolation is written out instead (index_select of the 8 corners): neither has a double
backward.

density(p) = act(raw_density(p) + blob(p)), blob(p) = blob_density * (1 - |p| / blob_radius)
(threestudio's "blob_magic3d" bias), so optimisation starts from a soft sphere of radius
~blob_radius; act is softplus (default) or trunc_exp. rgb(p) = sigmoid(raw_rgb(p)).

Empty-space skipping: a cell whose 8 corners (plus the largest blob bias in the cell) bound its
density below ``skip_density`` is skipped: its samples get density 0 and rgb 0 without evaluating
the interpolation (trilinear interpolation never exceeds its corners, and both activations are
monotonic, so the bound is exact). This drops at most ``skip_density`` per unit length of density;
0 disables it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.schedules import Scheduled, weighted_terms
from threedgen.render.grids import sample_grid
from threedgen.render.types import RenderOutput
from threedgen.render.volume import render_volume, surface_colour


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (exp(min(x, 15))), as torch-ngp / threestudio. Its backward
    is written in differentiable ops, so double backward (normals' gradients) works."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


_ACTIVATIONS = {"softplus": F.softplus, "trunc_exp": trunc_exp}


class NeRF(nn.Module):
    dynamic = False
    meshed_as = "isosurface"
    has_splats = False
    colour_field = True

    @dataclass(frozen=True)
    class Config:
        name: Literal["nerf"] = "nerf"
        resolution: int = 32
        aabb: float = 1.0
        blob_density: float = 10.0
        blob_radius: float = 0.5
        density_activation: Literal["softplus", "trunc_exp"] = "softplus"
        n_samples: int = 48  # per ray, stratified in training
        lr: float = 0.05
        lambda_sparsity: Scheduled = 0.0  # mean opacity
        lambda_entropy: Scheduled = 0.0  # binary entropy of opacity (threestudio's loss_opaque)
        lambda_orientation: Scheduled = 0.0  # DreamFusion's; turns on normal rendering
        lambda_tv: Scheduled = 0.0  # smoothness of both grids

        def parameters(self) -> int:
            """float32 numbers this config allocates (density and colour grid)."""
            return 4 * self.resolution ** 3

        def __post_init__(self):
            if self.resolution < 2 or self.n_samples < 1 or self.aabb <= 0:
                raise ValueError("resolution >= 2, n_samples >= 1 and aabb > 0 are required")

    """Density + colour field on dense grids.

    resolution: grid vertices per axis (R). aabb: half-size of the box. blob_density, blob_radius:
    the initial density bias (blob_density at the centre, 0 pre-activation at blob_radius).
    seed: seeds the colour initialisation (small noise around grey). density_activation:
    "softplus" or "trunc_exp". skip_density: empty-space skipping threshold (see module doc).
    init_color_std: std of the initial colour logits.
    """

    def __init__(self, resolution: int = 64, aabb: float = 1.0, blob_density: float = 10.0,
                 blob_radius: float = 0.5, seed: int = 0, density_activation: str = "softplus",
                 skip_density: float = 1e-2, init_color_std: float = 0.1):
        super().__init__()
        self.resolution, self.aabb = resolution, aabb
        self.blob_density, self.blob_radius = blob_density, blob_radius
        self.skip_density = skip_density
        self.activation = _ACTIVATIONS[density_activation]
        gen = torch.Generator().manual_seed(seed)
        R = resolution
        self.density = nn.Parameter(torch.zeros(R, R, R))  # raw, pre-activation, pre-bias
        self.color = nn.Parameter(torch.randn(R, R, R, 3, generator=gen) * init_color_std)  # logits
        # Largest blob bias inside each cell: at the cell's point nearest the origin.
        v = torch.linspace(-aabb, aabb, R)
        lo, hi = v[:-1], v[1:]
        near = torch.where(lo > 0, lo, torch.where(hi < 0, hi, torch.zeros_like(lo))).abs()
        sq = near.square()
        r_min = (sq[:, None, None] + sq[None, :, None] + sq[None, None, :]).sqrt()
        self.register_buffer("_cell_blob_max", blob_density * (1 - r_min / blob_radius),
                             persistent=False)
        self.register_buffer("_corner_offsets", torch.tensor(
            [0, 1, R, R + 1, R * R, R * R + 1, R * R + R, R * R + R + 1]), persistent=False)

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> NeRF:
        nerf = cls(cfg.resolution, cfg.aabb, cfg.blob_density, cfg.blob_radius, seed=seed,
                   density_activation=cfg.density_activation)
        nerf.cfg = cfg
        return nerf

    # ------------------------------------------------------------------ the system's calls
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not hasattr(self, "_optimizers"):
            self._optimizers = {"grids": torch.optim.Adam(self.parameters(), lr=self.cfg.lr, betas=(0.9, 0.99),
                                                          eps=1e-15)}
        return self._optimizers

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularisers with a non-zero weight at ``step``, by name."""
        c, i = self.cfg, out.info
        return weighted_terms(step, {
            "sparsity": (c.lambda_sparsity, lambda: opacity_sparsity(out.alpha)),
            "entropy": (c.lambda_entropy, lambda: opacity_entropy(out.alpha)),
            "orientation": (c.lambda_orientation,
                            lambda: orientation_loss(i.weights, i.normals, i.dirs)),
            "tv": (c.lambda_tv, self.tv_loss),
        })

    def pre_backward(self, step: int, optimizers: dict) -> None:
        pass

    def post_step(self, step: int, out: RenderOutput, optimizers: dict) -> None:
        pass

    def load_weights(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)

    # ------------------------------------------------------------------ field
    def blob(self, points: Tensor) -> Tensor:
        """[M, 3] -> [M] density bias (pre-activation)."""
        r = (points.square().sum(-1) + 1e-12).sqrt()
        return self.blob_density * (1 - r / self.blob_radius)

    def _occupied_cells(self) -> Tensor:
        """[(R-1)^3] bool, flattened [x, y, z]: cells whose density can reach skip_density."""
        with torch.no_grad():
            cell_max = F.max_pool3d(self.density[None, None], kernel_size=2, stride=1)[0, 0]
            bound = self.activation(cell_max + self._cell_blob_max)
            return (bound >= self.skip_density).reshape(-1)

    def field(self, points: Tensor, skip: bool = True) -> tuple[Tensor, Tensor]:
        """points [M, 3] -> (density [M] >= 0, rgb [M, 3] in [0, 1]).

        The grids are clamped at the box (points outside take boundary values; the blob bias is
        evaluated at the point itself). Both outputs are differentiable w.r.t. the grids, density
        also (twice) w.r.t. points. skip: empty-space skipping (module doc)."""
        R, M = self.resolution, points.shape[0]
        u = (points + self.aabb) * ((R - 1) / (2 * self.aabb))
        cell = u.detach().floor().clamp(0, R - 2)
        frac = (u - cell).clamp(0, 1)  # [M, 3]; points outside take the box's boundary value
        cell = cell.long()
        if skip and self.skip_density > 0:
            occ = self._occupied_cells()
            cell_id = (cell[:, 0] * (R - 1) + cell[:, 1]) * (R - 1) + cell[:, 2]
            keep = occ[cell_id].nonzero().squeeze(-1)
            if keep.shape[0] < M:
                d_k, rgb_k = self._interpolate(points.index_select(0, keep), cell[keep],
                                               frac.index_select(0, keep))
                density = d_k.new_zeros(M).index_copy(0, keep, d_k)
                rgb = rgb_k.new_zeros(M, 3).index_copy(0, keep, rgb_k)
                return density, rgb
        return self._interpolate(points, cell, frac)

    def _interpolate(self, points: Tensor, cell: Tensor, frac: Tensor) -> tuple[Tensor, Tensor]:
        if not points.requires_grad:
            return self._activate(points, self._grid_sample(points))
        R, M = self.resolution, points.shape[0]
        base = (cell[:, 0] * R + cell[:, 1]) * R + cell[:, 2]
        corners = (base[:, None] + self._corner_offsets).reshape(-1)  # [M * 8], [x, y, z] order
        # Trilinear weights as one [M, 8] product (cheaper to differentiate than nested lerps).
        f = torch.stack([1 - frac, frac], dim=1)  # [M, 2, 3]
        w = (f[:, :, None, None, 0] * f[:, None, :, None, 1] * f[:, None, None, :, 2]).reshape(M, 8)
        # One gather of 4 contiguous floats per corner beats two gathers (random access bound).
        table = torch.cat([self.density.reshape(-1, 1), self.color.reshape(-1, 3)], dim=1)
        v = table.index_select(0, corners).reshape(M, 8, 4)
        return self._activate(points, (w[:, :, None] * v).sum(1))

    def _grid_sample(self, points: Tensor) -> Tensor:
        """points [M, 3] -> raw [M, 4] (density, rgb logits), clamped at the box like the cells."""
        table = torch.cat([self.density[None], self.color.permute(3, 0, 1, 2)])  # [4, R, R, R] over [x, y, z]
        return sample_grid(table, points, self.aabb)

    def _activate(self, points: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
        """raw [M, 4] -> (density [M], rgb [M, 3]), adding the blob bias."""
        density = self.activation(raw[:, 0] + self.blob(points))
        return density, torch.sigmoid(raw[:, 1:])

    # ------------------------------------------------------------------ rendering / export
    def colours(self, points: Tensor) -> Tensor:
        """points [M, 3] -> the field's rgb [M, 3] there (no empty-space skipping)."""
        return self.field(points, skip=False)[1]

    def render(self, cameras: Cameras, background: Tensor, n_samples: int | None = None,
               stratified: bool | None = None, generator: torch.Generator | None = None,
               with_normals: bool | None = None, estimator=None) -> RenderOutput:
        """See ``render_volume``; rgb [B, 3, H, W], alpha/depth [B, 1, H, W], normal or None.

        Defaults come from the config: its n_samples, stratified sampling in training mode, and
        normals when the orientation regulariser is on."""
        cfg = getattr(self, "cfg", None)
        if n_samples is None:
            n_samples = cfg.n_samples if cfg else 64
        if stratified is None:
            stratified = self.training
        if with_normals is None:
            with_normals = bool(cfg and self.training and cfg.lambda_orientation != 0)
        return render_volume(self.field, cameras.to(self.color.device), aabb=self.aabb, n_samples=n_samples,
                             background=background, stratified=stratified, generator=generator,
                             estimator=estimator, with_normals=with_normals)

    def surface_colour(self, points: Tensor, normals: Tensor) -> Tensor:
        """points, outward unit normals [M, 3] -> [M, 3]: the rendered colour there, composited
        over two cells either side of the surface (``render.volume.surface_colour``)."""
        cell = 2 * self.aabb / (self.resolution - 1)
        return surface_colour(lambda p: self.field(p, skip=False), points, normals, depth=2 * cell)

    @torch.no_grad()
    def density_grid(self, resolution: int, chunk: int = 1 << 18) -> Tensor:
        """[R, R, R] density (post-activation, no skipping) at the vertices of a regular grid
        spanning the box: entry [i, j, k] is at (x_i, y_j, z_k), x = linspace(-aabb, aabb, R)."""
        v = torch.linspace(-self.aabb, self.aabb, resolution, device=self.density.device)
        pts = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), dim=-1).reshape(-1, 3)
        out = torch.cat([self.field(p, skip=False)[0] for p in pts.split(chunk)])
        return out.reshape(resolution, resolution, resolution)

    def tv_loss(self) -> Tensor:
        """Scalar: mean squared difference between neighbouring raw density values plus the same
        for the colour logits (smoothness regulariser for the explicit grids)."""
        loss = self.density.new_zeros(())
        for g in (self.density, self.color):
            for dim in range(3):
                loss = loss + torch.diff(g, dim=dim).square().mean()
        return loss


# ---------------------------------------------------------------------- regularisers
def opacity_sparsity(alpha: Tensor) -> Tensor:
    """alpha [B, 1, H, W] (any shape) -> scalar mean opacity (pushes empty space to be empty)."""
    return alpha.mean()


def opacity_entropy(alpha: Tensor, eps: float = 1e-3) -> Tensor:
    """alpha [B, 1, H, W] (any shape) -> scalar mean binary entropy -a log a - (1-a) log(1-a),
    alpha clamped to [eps, 1-eps] (threestudio's loss_opaque): pushes opacity to 0 or 1."""
    a = alpha.clamp(eps, 1 - eps)
    return -(a * a.log() + (1 - a) * (1 - a).log()).mean()


def orientation_loss(weights: Tensor, normals: Tensor, dirs: Tensor, n_rays: int | None = None,
                     detach_weights: bool = True) -> Tensor:
    """DreamFusion's orientation regulariser: sum_i stopgrad(w_i) * max(0, n_i . d)^2 per ray,
    averaged over rays (penalises normals facing away from the camera where there is mass).

    weights: [R, S] (batched) or [N] (packed); normals: [R, S, 3] / [N, 3]; dirs: unit ray
    directions [R, 3] (broadcast over samples) or the same shape as normals. n_rays: divisor,
    default weights.shape[0] (right for batched; pass the number of rays for packed input).
    Takes ``info.weights, info.normals, info.dirs`` (``VolumeInfo``) from ``render_volume``."""
    if dirs.dim() == normals.dim() - 1:
        dirs = dirs.unsqueeze(-2)
    w = weights.detach() if detach_weights else weights
    per_sample = w * (normals * dirs).sum(-1).clamp_min(0).square()
    return per_sample.sum() / max(1, n_rays if n_rays is not None else weights.shape[0])


__all__ = ["NeRF", "trunc_exp", "opacity_sparsity", "opacity_entropy", "orientation_loss"]
