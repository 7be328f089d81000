"""Asynchronous Score Distillation (ScaleDreamer, Ma et al. 2024, arXiv:2407.13584).

The noise prediction at a later timestep, with the same noise and the prompt, replaces SDS's
sampled eps as the baseline, which cancels most of the prior's own error term:

    x_t  = sqrt(a_t) x + sqrt(1 - a_t) eps,   x_t' = sqrt(a_t') x + sqrt(1 - a_t') eps  (same eps)
    t'   = t + dt,   dt = r (t - t_min) U(0, 1)     (r defaults to 0.1; t' < T)
    G    = w(t) (eps_hat^w(x_t; y, t) - eps_c(x_t'; y, t'))

With r = 0, G = w(t)(w - 1)(eps_c - eps_u): (w - 1) times C-SDS's classifier score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedgen.schedules import Scheduled, value_at
from threedgen.guidance.base import Guidance, GuidanceOutput, add_noise, encode_and_draw, output, weight
from threedgen.guidance.sds import Weighting
from threedgen.priors.cfg import Conditioning, bcast, guided_noise, predict_branches


class ASD(Guidance):
    @dataclass(frozen=True)
    class Config:
        name: Literal["asd"] = "asd"
        guidance_scale: Scheduled = 5.0
        t_min: Scheduled = 0.02
        t_max: Scheduled = 0.98
        weighting: Weighting = "sds"
        shift_ratio: Scheduled = 0.1  # r
        use_camera: bool = True

    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput (gradient flows to rgb)."""
        prior, cfg = self.prior, self.cfg
        T = prior.num_train_timesteps
        t_min = value_at(cfg.t_min, step)
        x, t, noise = encode_and_draw(prior, rgb, t_min, value_at(cfg.t_max, step), generator)
        u = torch.rand(len(x), generator=generator).to(x.device)
        shift = (value_at(cfg.shift_ratio, step) * (t - int(t_min * T)).clamp_min(0) * u).long()
        t_later = (t + shift).clamp_max(T - 1)
        a, a_later = prior.alphas_cumprod[t], prior.alphas_cumprod[t_later]
        cam_c = cond.camera if cfg.use_camera else cond.null_camera
        with torch.no_grad():
            guided = guided_noise(prior, add_noise(x, noise, a), t, cond, value_at(cfg.guidance_scale, step),
                                  cfg.use_camera)
            eps_later, = predict_branches(prior, add_noise(x, noise, a_later), t_later, [(cond.text, cam_c)])
            grad = bcast(weight(cfg.weighting, a), x) * (guided.eps - eps_later)
        return output(x, grad, t, guided.evals + len(x))
