"""Entropic Score Distillation (Wang et al. 2023, "Taming Mode Collapse in Score Distillation for
Text-to-3D Generation", arXiv:2401.00909).

VSD's particles all chase one mode, the Janus face among them; ESD adds an entropy term on the
rendered distribution, which turns eps_phi into classifier-free guidance on the camera:

    G = w(t) (eps_hat^w_pretrained(x_t; y, t) - [lam eps_phi(x_t; y, c) + (1 - lam) eps_phi(x_t; y, null c)])

lam = 1 is VSD. Everything else (the LoRA eps_phi, its training, the camera dropout that makes
eps_phi(.; null c) meaningful) is VSD's, reused by subclassing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedgen.schedules import Scheduled, value_at
from threedgen.guidance.vsd import VSD
from threedgen.priors.cfg import Conditioning


class ESD(VSD):
    @dataclass(frozen=True)
    class Config(VSD.Config):
        name: Literal["esd"] = "esd"
        camera_lambda: Scheduled = 0.5  # lam: weight of the camera-conditioned eps_phi

    def lora_score(self, x_t: Tensor, t: Tensor, cond: Conditioning, step: int) -> tuple[Tensor, int]:
        """lam eps_phi(x_t; y, c) + (1 - lam) eps_phi(x_t; y, null c) -> (eps, evals)."""
        lam = value_at(self.cfg.camera_lambda, step)
        B = len(x_t)
        null = torch.zeros(B, dtype=torch.bool, device=x_t.device)
        labels = torch.cat([self.labels(cond), self.labels(cond, null)])
        eps_c, eps_null = self.lora_eps(x_t.repeat(2, 1, 1, 1), t.repeat(2), cond.text.repeat(2, 1, 1),
                                        labels).chunk(2)
        return lam * eps_c + (1 - lam) * eps_null, 2 * B
