"""Score Distillation Sampling (DreamFusion, Poole et al. 2022, arXiv:2209.14988).

    x = E(render),  x_t = sqrt(a_t) x + sqrt(1 - a_t) eps,  eps ~ N(0, I),  t ~ U[t_min, t_max]
    G = w(t) (eps_hat^w(x_t; y, c, t) - eps),   eps_hat^w = eps_u + w (eps_c - eps_u)

G is injected as a detached target; the prior is never differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threedgen.config import Scheduled, value_at
from threedgen.guidance.base import (Conditioning, GuidanceOutput, guided_noise, inject,
                                     sample_timesteps, weight)


class SDS(nn.Module):
    @dataclass(frozen=True)
    class Config:
        name: Literal["sds"] = "sds"
        guidance_scale: float = 5.0
        t_min: Scheduled = 0.02
        t_max: Scheduled = 0.98
        weighting: Literal["sds", "uniform", "fantasia"] = "sds"
        use_camera: bool = True  # false: both CFG branches get the null camera

    def __init__(self, cfg: Config, prior):
        super().__init__()
        self.cfg, self.prior = cfg, prior

    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput (gradient flows to rgb)."""
        prior, cfg = self.prior, self.cfg
        rgb = F.interpolate(rgb, (prior.resolution,) * 2, mode="bilinear", align_corners=False,
                            antialias=True) if rgb.shape[-1] != prior.resolution else rgb
        x = prior.encode_images(rgb)
        t = sample_timesteps(len(x), value_at(cfg.t_min, step), value_at(cfg.t_max, step),
                             prior.num_train_timesteps, generator).to(x.device)
        a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = torch.randn(x.shape, generator=generator).to(x)
        with torch.no_grad():
            x_t = a.sqrt() * x + (1 - a).sqrt() * noise
            eps, _, _ = guided_noise(prior, x_t, t, cond, cfg.guidance_scale, cfg.use_camera)
            grad = weight(cfg.weighting, a) * (eps - noise)
        return GuidanceOutput(inject(x, grad), grad.flatten(1).norm(dim=1).mean().item(), t, 2 * len(x))
