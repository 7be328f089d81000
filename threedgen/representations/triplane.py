"""A triplane radiance field: three axis-aligned feature planes and a small MLP decoder.

features(p) = P_xy(x, y) + P_xz(x, z) + P_yz(y, z), each plane bilinearly sampled
(``render.grids.sample_triplane``, as ``F.grid_sample`` with align_corners=True: plane pixel 0
sits at -aabb and pixel R-1 at +aabb);
(raw_density, raw_rgb) = MLP(features); density = act(raw_density + blob(p)) with the same
"blob_magic3d" bias as the NeRF grid; rgb = sigmoid(raw_rgb).

The planes are a plain tensor argument of ``decode(planes, points)``, so an amortised generator can
produce them from a prompt and reuse the decoder.

Empty-space skipping: an occupancy grid (``occ_resolution``^3 cells, a buffer) marks cells whose
density, evaluated at the cell centre and dilated by one cell, is at least ``skip_density``; samples
in unmarked cells get density 0 without running the MLP. The grid is refreshed every ``occ_every``
training steps (as nerfacc's OccGridEstimator, it can lag the field by that many steps). An MLP has
no cheap exact bound, unlike the NeRF grid's corners, hence the refreshed estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.schedules import Scheduled, weighted_terms
from threedgen.render.grids import sample_triplane
from threedgen.render.types import RenderOutput
from threedgen.render.volume import render_volume, surface_colour, surface_normals
from threedgen.representations.nerf import _ACTIVATIONS, opacity_entropy, opacity_sparsity

class Triplane(nn.Module):
    dynamic = False
    meshed_as = "isosurface"
    has_splats = False
    colour_field = True

    @dataclass(frozen=True)
    class Config:
        name: Literal["triplane"] = "triplane"
        resolution: int = 64  # plane pixels per side
        channels: int = 16
        hidden: int = 32  # MLP width (one hidden layer)
        aabb: float = 1.0
        blob_density: float = 5.0
        blob_radius: float = 0.5
        density_activation: Literal["softplus", "trunc_exp"] = "softplus"
        n_samples: int = 48
        lr: float = 0.05  # planes
        lr_decoder: float = 0.005
        occ_resolution: int = 32
        occ_every: int = 16
        # Per-sample opacity ~ skip_density * step, ~0.01-0.02 at 32-48 samples over a chord of
        # 2-3.4: the scale of nerfacc's occupancy threshold (threestudio applies its 0.01 to
        # density * step). 0.01 kept 61% of the box at the initial blob, 0.2 keeps 21%.
        skip_density: float = 0.2
        lambda_sparsity: Scheduled = 0.0
        lambda_entropy: Scheduled = 0.0
        lambda_tv: Scheduled = 0.0  # smoothness of the planes

        def parameters(self) -> int:
            """float32 numbers this config allocates (planes and occupancy grid)."""
            return 3 * self.channels * self.resolution ** 2 + self.occ_resolution ** 3

        def __post_init__(self):
            if min(self.resolution, self.occ_resolution) < 2 or min(self.channels, self.hidden,
                                                                     self.n_samples, self.occ_every) < 1:
                raise ValueError("resolution, occ_resolution >= 2 and channels, hidden, n_samples, "
                                 "occ_every >= 1 are required")
            if self.aabb <= 0:
                raise ValueError("aabb > 0 is required")

    def __init__(self, cfg: Config, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)  # CPU draws, any default device
        R, C = cfg.resolution, cfg.channels
        self.planes = nn.Parameter(torch.randn(3, C, R, R, generator=gen, device="cpu") * 0.1)  # [3, C, R, R]
        self.decoder = nn.Sequential(nn.Linear(C, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 4))
        with torch.no_grad():  # deterministic for a seed, independent of torch's global RNG
            for layer in (self.decoder[0], self.decoder[2]):
                bound = layer.in_features ** -0.5
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen, device="cpu") * 2 - 1) * bound)
                layer.bias.zero_()
        self.activation = _ACTIVATIONS[cfg.density_activation]
        G = cfg.occ_resolution
        self.register_buffer("occupancy", torch.ones(G, G, G, dtype=torch.bool))  # saved: exact resume
        self._occ_step = None

    @property
    def aabb(self) -> float:
        return self.cfg.aabb

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> Triplane:
        return cls(cfg, seed)

    # ------------------------------------------------------------------ field
    def blob(self, points: Tensor) -> Tensor:
        """[M, 3] -> [M] density bias (pre-activation)."""
        r = (points.square().sum(-1) + 1e-12).sqrt()
        return self.cfg.blob_density * (1 - r / self.cfg.blob_radius)

    def decode(self, planes: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """planes [3, C, R, R], points [M, 3] in the box -> (density [M] >= 0, rgb [M, 3])."""
        raw = self.decoder(sample_triplane(planes, points, self.cfg.aabb))  # [M, 4]
        return self.activation(raw[:, 0] + self.blob(points)), torch.sigmoid(raw[:, 1:])

    def field(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [M, 3] -> (density [M], rgb [M, 3]); samples in unoccupied cells skip the MLP."""
        G, M = self.cfg.occ_resolution, points.shape[0]
        cell = ((points / self.cfg.aabb + 1) * (G / 2)).long().clamp(0, G - 1)
        keep = self.occupancy[cell[:, 0], cell[:, 1], cell[:, 2]].nonzero().squeeze(-1)
        if keep.shape[0] == M:
            return self.decode(self.planes, points)
        d, rgb = self.decode(self.planes, points.index_select(0, keep))
        return d.new_zeros(M).index_copy(0, keep, d), rgb.new_zeros(M, 3).index_copy(0, keep, rgb)

    @torch.no_grad()
    def update_occupancy(self) -> None:
        """Re-marks cells whose centre density (dilated by one cell) reaches skip_density."""
        density = self.density_grid(self.cfg.occ_resolution, centres=True)
        occ = F.max_pool3d((density >= self.cfg.skip_density).float()[None, None], 3, 1, 1)[0, 0]
        self.occupancy.copy_(occ.bool())

    def render_with_normals(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        """The render with unit world normals [B, 3, H, W]: the density field's -grad(density) at
        each pixel's surface point, differenced across a cell (``render.volume.surface_normals``)."""
        out = self.render(cameras, background)
        field_fn = lambda p: self.decode(self.planes, p)  # noqa: E731  no empty-space skipping
        cell = 2 * self.cfg.aabb / self.cfg.resolution
        return replace(out, normal=surface_normals(field_fn, cameras.to(out.depth.device), out.depth, cell))

    def surface_colour(self, points: Tensor, normals: Tensor) -> Tensor:
        """points, outward unit normals [M, 3] -> [M, 3]: the rendered colour there, composited
        over two plane texels either side of the surface (``render.volume.surface_colour``)."""
        texel = 2 * self.cfg.aabb / self.cfg.resolution
        return surface_colour(lambda p: self.decode(self.planes, p), points, normals, depth=2 * texel)

    @torch.no_grad()
    def density_grid(self, resolution: int, centres: bool = False, chunk: int = 1 << 18) -> Tensor:
        """[R, R, R] density (no skipping), entry [i, j, k] at (x_i, y_j, z_k): the vertices of a
        regular grid spanning the box, or with ``centres`` the centres of its R^3 cells."""
        a = self.cfg.aabb
        if centres:
            v = (torch.arange(resolution, device=self.planes.device) + 0.5) * (2 * a / resolution) - a
        else:
            v = torch.linspace(-a, a, resolution, device=self.planes.device)
        pts = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), dim=-1).reshape(-1, 3)
        out = torch.cat([self.decode(self.planes, p)[0] for p in pts.split(chunk)])
        return out.reshape(resolution, resolution, resolution)

    def tv_loss(self) -> Tensor:
        """Scalar: mean squared difference between neighbouring plane pixels."""
        return torch.diff(self.planes, dim=2).square().mean() + torch.diff(self.planes, dim=3).square().mean()

    # ------------------------------------------------------------------ the system's calls
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not hasattr(self, "_optimizers"):
            c = self.cfg
            self._optimizers = {"triplane": torch.optim.Adam(
                [{"params": [self.planes], "lr": c.lr},
                 {"params": self.decoder.parameters(), "lr": c.lr_decoder}], betas=(0.9, 0.99), eps=1e-15)}
        return self._optimizers

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularisers with a non-zero weight at ``step``, by name."""
        c = self.cfg
        return weighted_terms(step, {
            "sparsity": (c.lambda_sparsity, lambda: opacity_sparsity(out.alpha)),
            "entropy": (c.lambda_entropy, lambda: opacity_entropy(out.alpha)),
            "tv": (c.lambda_tv, self.tv_loss),
        })

    def pre_backward(self, step: int, optimizers: dict) -> None:
        if step % self.cfg.occ_every == 0 and self._occ_step != step:
            self.update_occupancy()
            self._occ_step = step

    def post_step(self, step: int, out: RenderOutput, optimizers: dict) -> None:
        pass

    def load_weights(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)

    def colours(self, points: Tensor) -> Tensor:
        """points [M, 3] -> the field's rgb [M, 3] there (no empty-space skipping)."""
        return self.decode(self.planes, points)[1]

    def render(self, cameras: Cameras, background: Tensor, n_samples: int | None = None,
               stratified: bool | None = None, generator: torch.Generator | None = None) -> RenderOutput:
        """See ``render_volume``: rgb [B, 3, H, W], alpha/depth [B, 1, H, W]. Defaults: the config's
        n_samples, stratified sampling in training mode."""
        return render_volume(self.field, cameras.to(self.planes.device), aabb=self.cfg.aabb,
                             n_samples=n_samples or self.cfg.n_samples, background=background,
                             stratified=self.training if stratified is None else stratified,
                             generator=generator)


__all__ = ["Triplane"]
