"""A set of 3D Gaussians with raw (pre-activation) parameters, laid out for gsplat's strategies."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.schedules import Scheduled, value_at
from threedgen.render.gaussians import EPS2D, footprint_eps2d, render_gaussians
from threedgen.render.types import RenderOutput

SH_C0 = 0.28209479177387814  # degree-0 SH basis constant


class Gaussians(nn.Module):
    dynamic = False
    meshed_as = "isosurface"
    has_splats = True
    colour_field = False

    @dataclass(frozen=True)
    class Config:
        name: Literal["gaussians"] = "gaussians"
        n: int = 2000
        init: Literal["ball", "sphere", "points"] = "ball"
        init_points: str | None = None  # with init=points: a .ply point cloud (colours optional) or .npy [N, 3]
        init_radius: float = 0.5
        init_opacity: float = 0.5
        lr_means: float = 0.003
        lr_scales: float = 0.01
        lr_quats: float = 0.003
        lr_opacities: float = 0.05
        lr_colors: float = 0.05
        densify: bool = False  # gsplat's DefaultStrategy: clone / split / prune
        densify_from: int = 50
        densify_until: int = 300
        densify_every: int = 50
        grow_grad2d: float = 0.0002
        prune_opacity: float = 0.005
        opacity_reset_every: int = 0  # 0: never; resets happen only while densifying
        opacity_reset_value: float = 0.01
        lambda_sparsity: Scheduled = 0.0  # mean rendered opacity

        def parameters(self) -> int:
            """float32 numbers this config allocates (14 floats per Gaussian)."""
            return 14 * self.n

        def __post_init__(self):
            if self.n < 1 or self.init_radius <= 0 or not 0 < self.init_opacity < 1:
                raise ValueError("n >= 1, init_radius > 0 and 0 < init_opacity < 1 are required")
            if (self.init == "points") != (self.init_points is not None):
                raise ValueError("init_points (a point cloud file) goes with init: points, and only with it")
            if self.init_points is not None and not Path(self.init_points).is_file():
                raise ValueError(f"init_points: no such file {self.init_points}")
            if self.densify_every < 1 or self.opacity_reset_every < 0:
                raise ValueError("densify_every >= 1 and opacity_reset_every >= 0 are required")

    """N Gaussians. ``params`` (an nn.ParameterDict, what gsplat's DefaultStrategy edits) holds:

    means [N, 3]; scales [N, 3] log-scales; quats [N, 4] wxyz (unnormalised); opacities [N]
    logits; colors [N, 3] RGB logits when sh_degree == 0, else SH coefficients [N, K, 3] with
    K = (sh_degree + 1)^2 (gsplat's convention: rgb = SH(dir) + 0.5).
    Use one optimizer per parameter, keyed like ``params``, for DefaultStrategy.
    """

    # The image size the Gaussians were fitted at (the system's camera resolution; None: not
    # known). Larger renders keep the fit's pixel footprint (render.gaussians.footprint_eps2d):
    # without it Gaussians fitted at 32^2 render porous at 256^2.
    fit_resolution: int | None = None
    # The width of one of the fit's pixels at the object (world units; None: not known). The
    # field (density_grid: the mesh export's isosurface, conversions) widens every Gaussian by
    # the same footprint in 3D (``_field_scales``), so the mesh follows the renders above the
    # fit's size instead of the thinner undilated mixture.
    fit_pixel: float | None = None

    def __init__(self, means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor,
                 colors: Tensor, sh_degree: int = 0):
        super().__init__()
        self.sh_degree = sh_degree
        self.params = nn.ParameterDict({
            "means": nn.Parameter(means), "scales": nn.Parameter(scales),
            "quats": nn.Parameter(quats), "opacities": nn.Parameter(opacities),
            "colors": nn.Parameter(colors),
        })

    # --- constructors ---
    @classmethod
    def from_points(cls, xyz: Tensor, rgb: Tensor, scale: float | None = None,
                    opacity: float = 0.1, sh_degree: int = 0) -> Gaussians:
        """Isotropic Gaussians at xyz [N, 3] with colours rgb [N, 3] in [0, 1]. The scale defaults
        to the mean spacing of N points in their bounding box."""
        xyz = xyz.detach().float()
        n = xyz.shape[0]
        if scale is None:
            extent = (xyz.max(0).values - xyz.min(0).values).clamp_min(1e-3)
            scale = float(extent.prod() / max(n, 1)) ** (1 / 3) * 0.5
        scales = torch.full((n, 3), math.log(scale))
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        opacities = torch.logit(torch.full((n,), opacity), eps=1e-4)
        rgb = rgb.detach().float().clamp(0, 1)
        if sh_degree == 0:
            colors = torch.logit(rgb, eps=1e-4)
        else:
            colors = torch.zeros(n, (sh_degree + 1) ** 2, 3)
            colors[:, 0] = (rgb - 0.5) / SH_C0
        return cls(xyz.clone(), scales, quats, opacities, colors, sh_degree)

    @classmethod
    def from_sphere(cls, n: int, radius: float = 0.5, color=(0.5, 0.5, 0.5), seed: int = 0,
                    sh_degree: int = 0) -> Gaussians:
        """n Gaussians on a sphere of the given radius, one colour. Deterministic for a seed."""
        g = torch.Generator().manual_seed(seed)  # CPU draws, any default device
        d = torch.randn(n, 3, generator=g, device="cpu")
        xyz = radius * d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        rgb = torch.tensor(color, dtype=torch.float32).expand(n, 3)
        scale = radius * math.sqrt(4 * math.pi / max(n, 1)) * 0.5
        return cls.from_points(xyz, rgb, scale=scale, sh_degree=sh_degree)

    @classmethod
    def from_random_ball(cls, n: int, radius: float = 0.5, seed: int = 0,
                         sh_degree: int = 0) -> Gaussians:
        """n Gaussians uniform in a ball, random colours. Deterministic for a seed."""
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(n, 3, generator=g, device="cpu")
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        xyz = radius * d * torch.rand(n, 1, generator=g, device="cpu") ** (1 / 3)
        rgb = torch.rand(n, 3, generator=g, device="cpu")
        scale = radius * (4 / 3 * math.pi / max(n, 1)) ** (1 / 3) * 0.5
        return cls.from_points(xyz, rgb, scale=scale, sh_degree=sh_degree)

    # --- activated views ---
    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def scales(self) -> Tensor:
        """[N, 3] linear scales."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> Tensor:
        return self.params["quats"]

    @property
    def opacities(self) -> Tensor:
        """[N] in (0, 1)."""
        return torch.sigmoid(self.params["opacities"])

    @property
    def colors(self) -> Tensor:
        """[N, 3] RGB in (0, 1), or SH coefficients [N, K, 3]."""
        c = self.params["colors"]
        return torch.sigmoid(c) if self.sh_degree == 0 else c

    # --- the system's calls ---
    @classmethod
    def from_point_cloud(cls, path: str | Path, opacity: float = 0.1) -> Gaussians:
        """Gaussians at the points of a .ply (vertex colours if it has them, else grey) or a .npy
        array [N, 3]. Raises ValueError (one line) for a missing or malformed file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"init_points: no such file {path}")  # also checked by the Config
        try:
            if path.suffix == ".npy":
                xyz, rgb = np.load(path), None
            else:
                import trimesh

                cloud = trimesh.load(path, process=False)
                xyz = np.asarray(cloud.vertices)
                colors = getattr(cloud, "colors", None)
                if colors is None or not len(colors):
                    colors = getattr(getattr(cloud, "visual", None), "vertex_colors", None)
                rgb = None if colors is None or len(colors) != len(xyz) else np.asarray(colors)[:, :3] / 255.0
        except Exception as e:  # numpy / trimesh parse errors
            raise ValueError(f"init_points: cannot read {path} ({e})") from None
        if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
            raise ValueError(f"init_points: {path} holds no [N, 3] points (got shape {xyz.shape})")
        xyz = torch.as_tensor(xyz, dtype=torch.float32)
        rgb = torch.full_like(xyz, 0.5) if rgb is None else torch.as_tensor(rgb, dtype=torch.float32)
        return cls.from_points(xyz, rgb, opacity=opacity)

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> Gaussians:
        if cfg.init == "points":
            g = cls.from_point_cloud(cfg.init_points, opacity=cfg.init_opacity)
            g.cfg = cfg
            return g
        make = cls.from_random_ball if cfg.init == "ball" else cls.from_sphere
        g = make(cfg.n, radius=cfg.init_radius, seed=seed)
        with torch.no_grad():
            g.params["opacities"].fill_(math.log(cfg.init_opacity / (1 - cfg.init_opacity)))
        g.cfg = cfg
        return g

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per parameter, keyed like ``params`` (DefaultStrategy edits them in place)."""
        if not hasattr(self, "_optimizers"):
            c = self.cfg
            lrs = {"means": c.lr_means, "scales": c.lr_scales, "quats": c.lr_quats,
                   "opacities": c.lr_opacities, "colors": c.lr_colors}
            self._optimizers = {k: torch.optim.Adam([self.params[k]], lr=lr, eps=1e-15) for k, lr in lrs.items()}
        return self._optimizers

    def _strategy(self):
        if not hasattr(self, "_strategy_obj"):
            from gsplat.strategy import DefaultStrategy

            c = self.cfg
            # Opacity resets are ours (post_step): this gsplat version's reset test,
            # ``step % reset_every == 0 & step > 0``, parses as a chained comparison that is never true.
            self._strategy_obj = DefaultStrategy(grow_grad2d=c.grow_grad2d, refine_start_iter=c.densify_from,
                                                 refine_stop_iter=c.densify_until, refine_every=c.densify_every,
                                                 prune_opa=c.prune_opacity, reset_every=10**9,
                                                 absgrad=False, verbose=False)
            self._strategy_state = self._strategy_obj.initialize_state(scene_scale=1.0)
        return self._strategy_obj, self._strategy_state

    def get_extra_state(self) -> dict:
        """The densification statistics (gradient accumulators) go into checkpoints, so that a
        resumed run densifies exactly as an uninterrupted one."""
        return dict(self._strategy_state) if hasattr(self, "_strategy_state") else {}

    def set_extra_state(self, state: dict) -> None:
        if state:
            self._strategy()[1].update(state)  # checkpoint tensors: moved to the parameters' in post_step

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        w = value_at(self.cfg.lambda_sparsity, step)
        return {"sparsity": w * out.alpha.mean()} if w > 0 else {}

    def pre_backward(self, step: int, optimizers: dict) -> None:
        pass

    def post_step(self, step: int, out: RenderOutput, optimizers: dict) -> None:
        c = self.cfg
        if c.densify and step < c.densify_until:
            strategy, state = self._strategy()
            device = self.means.device  # the statistics follow the parameters (after .to() or a resume)
            state.update({k: v.to(device) for k, v in state.items() if torch.is_tensor(v)})
            info = out.info.strategy_info()  # gsplat's strategy reads a meta dict: the one conversion
            strategy.step_post_backward(self.params, optimizers, state, step, info, packed=False)
            if c.opacity_reset_every and step > 0 and step % c.opacity_reset_every == 0:
                from gsplat.strategy.ops import reset_opa

                reset_opa(self.params, optimizers, state, value=c.opacity_reset_value)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a state dict, resizing the parameters first (densification changes N), on the
        device they are on (a checkpoint loads on the CPU; the module may be on a GPU)."""
        device = self.means.device
        for k, v in state.items():
            if k.startswith("params."):
                self.params[k[len("params."):]] = nn.Parameter(torch.empty_like(v, device=device))
        if hasattr(self, "_optimizers"):
            del self._optimizers
        self.load_state_dict(state)

    aabb = 1.0  # the box of ``density_grid`` (the embedded world's objects fit in the unit ball)

    def _local(self, points: Tensor, pad: float = 0.0, cells: int = 16,
               chunk: int = 2048) -> Iterator[tuple[Tensor, Tensor]]:
        """Spatial batches of points [M, 3]: yields (point ids [m], ids [n] of the Gaussians
        whose 3-sigma box, along the longest axis, comes within ``pad`` of those points' box).
        The points are binned into ``cells``^3 boxes over their extent, ``chunk`` at a time, so
        a query costs about M x (Gaussians per box), not M x N."""
        reach = 3 * self.scales.amax(-1, keepdim=True) + pad  # [N, 1]
        lo_g, hi_g = self.means - reach, self.means + reach
        lo, hi = points.amin(0), points.amax(0)
        cell = ((points - lo) / (hi - lo).clamp_min(1e-9) * cells).long().clamp(max=cells - 1)
        key = (cell[:, 0] * cells + cell[:, 1]) * cells + cell[:, 2]
        order = key.argsort()
        bounds = torch.searchsorted(key[order], torch.arange(cells ** 3 + 1, device=key.device)).tolist()
        for b in range(cells ** 3):
            if bounds[b] == bounds[b + 1]:
                continue
            for idx in order[bounds[b]:bounds[b + 1]].split(chunk):
                p = points[idx]
                near = ((hi_g >= p.amin(0)) & (lo_g <= p.amax(0))).all(-1).nonzero().squeeze(-1)
                if len(near):
                    yield idx, near

    def _precisions(self, scales: Tensor | None = None) -> Tensor:
        """[N, 3, 3] inverse covariances (of ``scales`` [N, 3], default the Gaussians' own)."""
        from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

        return _quat_scale_to_covar_preci(self.quats, self.scales if scales is None else scales, compute_covar=False)[1]

    def _field_scales(self) -> Tensor:
        """[N, 3]: the scales with the fit's 2D dilation (EPS2D pixels^2) added in 3D at
        ``fit_pixel`` per pixel, a Mip-Splatting-style 3D filter (R S^2 R^T + s^2 I keeps R)."""
        if not self.fit_pixel:
            return self.scales
        return (self.scales.square() + EPS2D * self.fit_pixel ** 2).sqrt()

    def _rgb(self, near: Tensor, dirs: Tensor | None) -> Tensor:
        """Colours of Gaussians ``near`` [n]: [n, 3], or [m, n, 3] seen along dirs [m, 3] (SH)."""
        from gsplat.cuda._torch_impl import _spherical_harmonics

        if self.sh_degree == 0:
            return self.colors[near]
        if dirs is None:
            return self.colors[near, 0] * SH_C0 + 0.5
        coeffs = self.colors[near][None].expand(len(dirs), -1, -1, -1)
        return (_spherical_harmonics(self.sh_degree, dirs[:, None].expand(-1, len(near), -1), coeffs) + 0.5).clamp_min(0)

    @torch.no_grad()
    def field(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """The mixture as a field: points [M, 3] -> (density [M], rgb [M, 3]).

        density(x) = sum_i w_i(x), w_i(x) = o_i exp(-0.5 d_i^T Sigma_i^-1 d_i), d_i = x - mu_i,
        counting each Gaussian within 3 sigma (``_local``); rgb(x) = sum_i w_i c_i / density,
        c_i the view-independent (DC) colour; 0 where no Gaussian reaches. Sigma_i carries the
        fit's footprint when ``fit_pixel`` is known (``_field_scales``)."""
        scales = self._field_scales()
        precis = self._precisions(scales)
        density, rgb = points.new_zeros(len(points)), points.new_zeros(len(points), 3)
        widening = math.sqrt(EPS2D) * (self.fit_pixel or 0.0)  # the most _field_scales adds to a scale
        for idx, near in self._local(points, pad=3 * widening):
            d = points[idx, None] - self.means[near][None]  # [m, n, 3]
            w = self.opacities[near] * torch.exp(-0.5 * torch.einsum("mni,nij,mnj->mn", d, precis[near], d))
            density[idx] = w.sum(-1)
            rgb[idx] = (w @ self._rgb(near, None)) / density[idx, None].clamp_min(1e-12)
        return density, rgb

    def render_with_normals(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        """The render with unit world normals [B, 3, H, W] (facing the camera) from its depth: the
        back-projected surface differenced across one pixel of the fit's size (``fit_resolution``;
        one pixel when unknown), the finest detail a fit holds; 1-pixel differences at 256^2 of a
        32^2 fit see the unevenness of the Gaussians' expected depth (on a fitted cube's flat
        face, mean |n - mean n| 0.42, against 0.29). Not the mixture's density gradient: a fit
        is a shell of Gaussians whose density peaks where the rendered depth lies, and there the
        gradient across the surface vanishes (0.77 on that face)."""
        out = self.render(cameras, background)
        step = max(1, round(cameras.height / self.fit_resolution)) if self.fit_resolution else 1
        return replace(out, normal=cameras.to(out.depth.device).normals_at(out.depth, step))

    def density_grid(self, resolution: int) -> Tensor:
        """[R, R, R] mixture density (``field``) at the vertices of a regular grid spanning
        [-aabb, aabb]^3, entry [i, j, k] at (x_i, y_j, z_k)."""
        v = torch.linspace(-self.aabb, self.aabb, resolution, device=self.means.device)
        pts = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), dim=-1).reshape(-1, 3)
        return self.field(pts)[0].reshape(resolution, resolution, resolution)

    @torch.no_grad()
    def surface_colour(self, points: Tensor, normals: Tensor) -> Tensor:
        """points, outward unit normals [M, 3] -> [M, 3]: the colour a ray sees that starts
        ``depth`` outside the surface and runs down -normal for 2 ``depth`` (depth = the median
        3-sigma reach): the Gaussians it meets, each with its peak alpha along the ray,
        o_i exp(-0.5 min_t m_i(t)) (as ray-traced Gaussians), composited front to back by the
        place of that peak and divided by the total opacity; the field's colour where the ray
        meets none."""
        depth = float(3 * self.scales.amax(-1).median())
        precis = self._precisions()
        rgb, opacity = points.new_zeros(len(points), 3), points.new_zeros(len(points))
        for idx, near in self._local(points, pad=depth):
            ray = -normals[idx]  # [m, 3]
            d = (points[idx] - depth * ray)[:, None] - self.means[near][None]  # origin - mu: [m, n, 3]
            p_ray = torch.einsum("nij,mj->mni", precis[near], ray)  # P r
            a = (ray[:, None] * p_ray).sum(-1)  # r^T P r [m, n]
            b = (d * p_ray).sum(-1)  # r^T P d
            t = -b / a  # where the Gaussian peaks along the ray
            m_min = torch.einsum("mni,nij,mnj->mn", d, precis[near], d) - b * b / a
            alpha = (self.opacities[near] * torch.exp(-0.5 * m_min.clamp_min(0))).clamp(max=0.99)
            alpha = torch.where((t >= 0) & (t <= 2 * depth), alpha, 0)
            t, order = t.sort(-1)
            alpha = alpha.gather(1, order)
            trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
            w = alpha * trans  # [m, n]
            c = self._rgb(near, ray)
            c = c[order] if c.dim() == 2 else c.gather(1, order[..., None].expand(-1, -1, 3))
            rgb[idx] = (w[..., None] * c).sum(1)
            opacity[idx] = w.sum(-1)
        seen = opacity > 1e-4
        rgb[seen] /= opacity[seen, None]
        if not seen.all():
            rgb[~seen] = self.field(points[~seen])[1]
        return rgb

    def render(self, cameras: Cameras, background: Tensor, backend: str = "auto",
               generator: torch.Generator | None = None) -> RenderOutput:
        """Render into cameras over background [3]; see render_gaussians, with the fit's pixel
        footprint (``fit_resolution``). (``generator`` is accepted for the common interface:
        rasterization is deterministic.)"""
        return render_gaussians(self.means, self.quats, self.scales, self.opacities, self.colors,
                                cameras.to(self.means.device), background,
                                sh_degree=self.sh_degree or None, backend=backend,
                                eps2d=footprint_eps2d(cameras.height, self.fit_resolution))
