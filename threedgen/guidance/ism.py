"""Interval Score Matching (LucidDreamer, Liang et al. 2023, arXiv:2311.11284).

SDS matches eps_hat(x_t) against the random eps it noised with; ISM replaces both the noising and
the target with deterministic DDIM inversion under the unconditional prompt (eps_u = eps(., "", .)):

    x -> x_s:  DDIM inversion from t = 0 in strides of ``inversion_stride`` (at most
               ``inversion_steps`` hops), s = t - delta
    x_s -> x_t: one more inversion hop, with eps_u(x_s, s)
    G = w(t) (eps_hat^w(x_t; y, c, t) - eps_u(x_s, s)),   w(t) = sqrt((1 - a_t) / a_t)

LucidDreamer anneals t_max 0.98 -> 0.5 and delta 0.10 -> 0.08 (in units of T) over its warm-up;
the recipes do the same with Ramps. Cost: the inversion hops + 1 + the CFG pair per view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedgen.schedules import Scheduled, value_at
from threedgen.guidance.base import (Guidance, GuidanceOutput, ddim_hop, output, draw_timesteps,
                                     to_prior_input, weight)
from threedgen.guidance.sds import Weighting
from threedgen.priors.cfg import Conditioning, bcast, guided_noise, predict_branches


class ISM(Guidance):
    @dataclass(frozen=True)
    class Config:
        name: Literal["ism"] = "ism"
        guidance_scale: Scheduled = 7.5
        t_min: Scheduled = 0.02
        t_max: Scheduled = 0.98
        interval: Scheduled = 0.08  # delta = t - s, as a fraction of T
        inversion_stride: Scheduled = 0.2  # stride of the x -> x_s inversion, fraction of T
        inversion_steps: int = 5  # at most this many hops from x to x_s
        weighting: Weighting = "ism"
        use_camera: bool = True

    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput (gradient flows to rgb)."""
        prior, cfg = self.prior, self.cfg
        T = prior.num_train_timesteps
        x = to_prior_input(prior, rgb)
        t = draw_timesteps(prior, len(x), value_at(cfg.t_min, step), value_at(cfg.t_max, step), generator).to(x.device)
        s = (t - round(value_at(cfg.interval, step) * T)).clamp_min(0)
        with torch.no_grad():
            x_s, evals = self.invert(x, s, cond, max(1, round(value_at(cfg.inversion_stride, step) * T)))
            x_t, target, more = self.hop_to_t(x_s, s, t, cond, step)
            guided = guided_noise(prior, x_t, t, cond, value_at(cfg.guidance_scale, step), cfg.use_camera)
            grad = bcast(weight(cfg.weighting, prior.alphas_cumprod[t]), x) * (guided.eps - target)
        return output(x, grad, t, evals + more + guided.evals)

    def eps_uncond(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """eps(x_t, "", null camera, t) [B, C, h, w] for the views in x_t (cond cut to match)."""
        B = len(x_t)
        null_camera = None if cond.null_camera is None else cond.null_camera[:B]
        return predict_branches(self.prior, x_t, t, [(cond.null_text[:B], null_camera)])[0]

    def invert(self, x: Tensor, s: Tensor, cond: Conditioning, stride: int) -> tuple[Tensor, int]:
        """DDIM-invert x [B, C, h, w] (taken as the sample at t = 0) to x_s, s [B], in hops of
        ``stride`` from max(s - stride * inversion_steps, 0) -> (x_s, prior evals)."""
        a = self.prior.alphas_cumprod
        cur = (s - stride * self.cfg.inversion_steps).clamp_min(0)
        evals = 0
        while bool((cur < s).any()):
            live = (cur < s).nonzero().squeeze(1)  # views still below their s
            nxt = torch.minimum(cur[live] + stride, s[live])
            eps = self.eps_uncond(x[live], cur[live], _select(cond, live))
            x = x.index_copy(0, live, ddim_hop(x[live], eps, a[cur[live]], a[nxt]))
            cur = cur.index_copy(0, live, nxt)
            evals += len(live)
        return x, evals

    def hop_to_t(self, x_s: Tensor, s: Tensor, t: Tensor, cond: Conditioning, step: int
                 ) -> tuple[Tensor, Tensor, int]:
        """The last inversion hop -> (x_t, target eps_u(x_s, s), prior evals)."""
        a = self.prior.alphas_cumprod
        eps_s = self.eps_uncond(x_s, s, cond)
        return ddim_hop(x_s, eps_s, a[s], a[t]), eps_s, len(x_s)


def _select(cond: Conditioning, index: Tensor) -> Conditioning:
    """The conditions of a subset of views (only the fields inversion reads)."""
    pick = lambda v: None if v is None else v[index]  # noqa: E731
    return Conditioning(cond.text[index], cond.null_text[index], pick(cond.camera), pick(cond.null_camera))
