"""A set of 3D Gaussians with raw (pre-activation) parameters, laid out for gsplat's strategies."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.render.gaussians import render_gaussians
from threedgen.render.types import RenderOutput

SH_C0 = 0.28209479177387814  # degree-0 SH basis constant


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


class Gaussians(nn.Module):
    """N Gaussians. ``params`` (an nn.ParameterDict, what gsplat's DefaultStrategy edits) holds:

    means [N, 3]; scales [N, 3] log-scales; quats [N, 4] wxyz (unnormalised); opacities [N]
    logits; colors [N, 3] RGB logits when sh_degree == 0, else SH coefficients [N, K, 3] with
    K = (sh_degree + 1)^2 (gsplat's convention: rgb = SH(dir) + 0.5).
    Use one optimizer per parameter, keyed like ``params``, for DefaultStrategy.
    """

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
        opacities = _logit(torch.full((n,), opacity))
        rgb = rgb.detach().float().clamp(0, 1)
        if sh_degree == 0:
            colors = _logit(rgb)
        else:
            colors = torch.zeros(n, (sh_degree + 1) ** 2, 3)
            colors[:, 0] = (rgb - 0.5) / SH_C0
        return cls(xyz.clone(), scales, quats, opacities, colors, sh_degree)

    @classmethod
    def from_sphere(cls, n: int, radius: float = 0.5, color=(0.5, 0.5, 0.5), seed: int = 0,
                    sh_degree: int = 0) -> Gaussians:
        """n Gaussians on a sphere of the given radius, one colour. Deterministic for a seed."""
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(n, 3, generator=g)
        xyz = radius * d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        rgb = torch.tensor(color, dtype=torch.float32).expand(n, 3)
        scale = radius * math.sqrt(4 * math.pi / max(n, 1)) * 0.5
        return cls.from_points(xyz, rgb, scale=scale, sh_degree=sh_degree)

    @classmethod
    def from_random_ball(cls, n: int, radius: float = 0.5, seed: int = 0,
                         sh_degree: int = 0) -> Gaussians:
        """n Gaussians uniform in a ball, random colours. Deterministic for a seed."""
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(n, 3, generator=g)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        xyz = radius * d * torch.rand(n, 1, generator=g) ** (1 / 3)
        rgb = torch.rand(n, 3, generator=g)
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

    def render(self, cameras: Cameras, background: Tensor, backend: str = "auto") -> RenderOutput:
        """Render into cameras over background [3]; see render_gaussians."""
        return render_gaussians(self.means, self.quats, self.scales, self.opacities, self.colors,
                                cameras.to(self.means.device), background,
                                sh_degree=self.sh_degree or None, backend=backend)
