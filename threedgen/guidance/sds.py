"""Score Distillation Sampling (DreamFusion, Poole et al. 2022, arXiv:2209.14988).

    x = E(render),  x_t = sqrt(a_t) x + sqrt(1 - a_t) eps,  eps ~ N(0, I),  t ~ U[t_min, t_max]
    G = w(t) (eps_hat^w(x_t; y, c, t) - eps),   eps_hat^w = eps_u + w (eps_c - eps_u)

G is injected as a detached target; the prior is never differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedgen.config import Scheduled, value_at
from threedgen.guidance.base import (Conditioning, Guidance, GuidanceOutput, add_noise,
                                     bcast, encode_and_draw, guided_noise, output, weight)

Weighting = Literal["sds", "uniform", "fantasia", "ism"]


class SDS(Guidance):
    @dataclass(frozen=True)
    class Config:
        name: Literal["sds"] = "sds"
        guidance_scale: Scheduled = 5.0
        t_min: Scheduled = 0.02
        t_max: Scheduled = 0.98
        weighting: Weighting = "sds"
        use_camera: bool = True  # false: both CFG branches get the null camera

    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput (gradient flows to rgb)."""
        prior, cfg = self.prior, self.cfg
        x, t, noise = encode_and_draw(prior, rgb, value_at(cfg.t_min, step), value_at(cfg.t_max, step), generator)
        a = prior.alphas_cumprod[t]
        with torch.no_grad():
            guided = guided_noise(prior, add_noise(x, noise, a), t, cond,
                                  value_at(cfg.guidance_scale, step), cfg.use_camera)
            grad = bcast(weight(cfg.weighting, a), x) * (guided.eps - noise)
        return output(x, grad, t, guided.evals)
