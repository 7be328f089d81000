"""Classifier Score Distillation (Yu et al. 2023, "Text-to-3D with Classifier Score
Distillation", arXiv:2310.19415).

SDS's gradient splits into a generative and a classifier term,
    w(t)(eps_hat^w - eps) = w(t)(eps_u - eps) + w * w(t)(eps_c - eps_u),
and C-SDS keeps only the classifier term, scaled by w (``guidance_scale``):

    G = w * w(t) (eps_c(x_t) - eps_u(x_t))

With a negative prompt (eps_neg) the unconditional branch is blended towards it, beta annealed:

    G = w * w(t) (eps_c - (1 - beta) eps_u - beta eps_neg)

``normalize`` divides each view's G by its L2 norm (the paper's gradient normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from threedgen.schedules import Scheduled, value_at
from threedgen.guidance.base import Guidance, GuidanceOutput, add_noise, encode_and_draw, output, weight
from threedgen.guidance.sds import Weighting
from threedgen.priors.cfg import Conditioning, bcast, guided_noise, predict_branches


class CSDS(Guidance):
    @dataclass(frozen=True)
    class Config:
        name: Literal["csds"] = "csds"
        guidance_scale: Scheduled = 5.0  # multiplies the classifier score
        t_min: Scheduled = 0.02
        t_max: Scheduled = 0.98
        weighting: Weighting = "sds"
        negative_beta: Scheduled = 0.5  # beta; used only with a negative prompt
        normalize: bool = False
        use_camera: bool = True

    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput (gradient flows to rgb)."""
        prior, cfg = self.prior, self.cfg
        x, t, noise = encode_and_draw(prior, rgb, value_at(cfg.t_min, step), value_at(cfg.t_max, step), generator)
        a = prior.alphas_cumprod[t]
        with torch.no_grad():
            x_t = add_noise(x, noise, a)
            # At scale 1, eps - eps_u is the classifier score (with Perp-Neg's correction if on).
            guided = guided_noise(prior, x_t, t, replace(cond, negative=None), 1.0, cfg.use_camera)
            score, evals = guided.eps - guided.eps_u, guided.evals
            if cond.negative is not None:
                eps_neg, = predict_branches(prior, x_t, t, [(cond.negative, cond.null_camera)])
                beta = value_at(cfg.negative_beta, step)
                score = score + beta * (guided.eps_u - eps_neg)  # = eps_c - (1-b) eps_u - b eps_neg
                evals += len(x)
            grad = value_at(cfg.guidance_scale, step) * bcast(weight(cfg.weighting, a), x) * score
            if cfg.normalize:
                grad = grad / bcast(grad.flatten(1).norm(dim=1).clamp_min(1e-8), grad)
        return output(x, grad, t, evals)
