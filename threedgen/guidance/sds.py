"""Score Distillation Sampling (DreamFusion, Poole et al. 2022, arXiv:2209.14988).

    x = E(render),  x_t = sqrt(a_t) x + sqrt(1 - a_t) eps,  eps ~ N(0, I),  t ~ U[t_min, t_max]
    G = w(t) (eps_hat^w(x_t; y, c, t) - eps),   eps_hat^w = eps_u + w (eps_c - eps_u)

G is injected as a detached target; the prior is never differentiated.

``x0_reconstruction`` (MVDream's variant, as its threestudio guidance) replaces G by the gap to
the one-step reconstruction, G = x - x0_hat with x0_hat = (x_t - sqrt(1 - a_t) eps_hat^w) / sqrt(a_t),
whose per-group standard deviation is pulled towards that of the unguided reconstruction by
``reconstruction_std_rescale`` (CFG rescale, against the over-saturation of a large w).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedgen.schedules import Scheduled, value_at
from threedgen.guidance.base import Guidance, GuidanceOutput, add_noise, encode_and_draw, output, weight
from threedgen.priors.cfg import Conditioning, bcast, guided_noise

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
        x0_reconstruction: bool = False
        reconstruction_std_rescale: Scheduled = 0.5

    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput (gradient flows to rgb)."""
        prior, cfg = self.prior, self.cfg
        x, t, noise = encode_and_draw(prior, rgb, value_at(cfg.t_min, step), value_at(cfg.t_max, step), generator)
        a = prior.alphas_cumprod[t]
        with torch.no_grad():
            x_t = add_noise(x, noise, a)
            guided = guided_noise(prior, x_t, t, cond, value_at(cfg.guidance_scale, step), cfg.use_camera)
            if cfg.x0_reconstruction:
                grad = x - self.reconstruction(x_t, a, guided, value_at(cfg.reconstruction_std_rescale, step))
            else:
                grad = bcast(weight(cfg.weighting, a), x) * (guided.eps - noise)
        return output(x, grad, t, guided.evals)

    def reconstruction(self, x_t: Tensor, a: Tensor, guided, rescale: float) -> Tensor:
        """x0_hat [B, C, h, w] from the guided eps, std-rescaled per group of views towards the
        unguided (conditional) reconstruction."""
        x0 = lambda eps: (x_t - bcast((1 - a).sqrt(), x_t) * eps) / bcast(a.sqrt(), x_t)  # noqa: E731
        x0_cfg = x0(guided.eps)
        if rescale <= 0:
            return x0_cfg
        V = self.prior.num_views
        group_std = lambda z: z.unflatten(0, (-1, V)).flatten(1).std(dim=1).repeat_interleave(V) + 1e-8  # noqa: E731
        factor = group_std(x0(guided.eps_c)) / group_std(x0_cfg)
        return rescale * bcast(factor, x_t) * x0_cfg + (1 - rescale) * x0_cfg
