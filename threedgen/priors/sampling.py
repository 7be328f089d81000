"""Ancestral-free DDIM sampling from any prior, with the guidance module's CFG convention."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import Tensor

from threedgen.guidance.base import Conditioning, guided_noise


@torch.no_grad()
def ddim_sample(prior, cond: Conditioning, guidance_scale: float = 3.0, steps: int = 50,
                generator: torch.Generator | None = None) -> Tensor:
    """Sample B images for B conditions -> rgb [B, 3, R, R] in [0, 1]."""
    scheduler = DDIMScheduler.from_config(prior.scheduler.config, clip_sample=False,
                                          set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    B = cond.text.shape[0]
    shape = prior.encode_images(torch.zeros(1, 3, prior.resolution, prior.resolution)).shape[1:]
    x = torch.randn((B, *shape), generator=generator).to(cond.text.device)
    for t in scheduler.timesteps:
        tt = torch.full((B,), int(t), device=x.device, dtype=torch.long)
        eps, _, _ = guided_noise(prior, x, tt, cond, guidance_scale)
        x = scheduler.step(eps, t, x).prev_sample
    return prior.decode(x).clamp(0, 1)
