"""Ancestral-free DDIM sampling from any prior, with the guidance module's CFG convention."""

from __future__ import annotations

import torch
from tqdm import tqdm
from diffusers import DDIMScheduler
from torch import Tensor

from threedgen.priors.cfg import Conditioning, guided_noise


@torch.no_grad()
def ddim_sample(prior, cond: Conditioning, guidance_scale: float = 3.0, steps: int = 50,
                generator: torch.Generator | None = None, t_start: int | None = None,
                mean_latent: Tensor | None = None, progress: str | None = None) -> Tensor:
    """Sample B images for B conditions -> rgb [B, 3, R, R] in [0, 1] (a video prior: clips
    [B, 3, T, R, R] of the T frames its world.json names).

    t_start: begin the trajectory at the first DDIM timestep <= t_start, from
    x = sqrt(abar) * mean_latent + sqrt(1 - abar) * noise, a Gaussian with the first moment of the
    training data's q(x_t) (mean_latent [1, C, h, w]: the mean of the encoded training images;
    zeros if None). None starts at the top of the schedule from pure noise, as usual.

    Why: a schedule whose last step keeps some signal (squaredcos at t = 980: abar ~ 1e-3) teaches
    a model to read the data's faint mean from x_T; started from pure noise it then drifts. The
    embedded prior, from pure noise, draws tinted backgrounds and checkerboard noise, yet started
    at t = 850 from the mean image its samples are right (``threedgen check-prior``).

    progress: a progress bar of this name over the DDIM steps, on stderr when it is a terminal."""
    # guided_noise gives epsilon whatever the UNet predicts (v-prediction is converted)
    scheduler = DDIMScheduler.from_config(prior.scheduler.config, clip_sample=False,
                                          set_alpha_to_one=False, prediction_type="epsilon")
    scheduler.set_timesteps(steps)
    timesteps = [t for t in scheduler.timesteps if t_start is None or t <= t_start]
    B = cond.text.shape[0]
    R = prior.resolution
    blank = torch.zeros(1, 3, prior.world["frames"], R, R) if prior.video else torch.zeros(1, 3, R, R)
    shape = prior.encode_images(blank).shape[1:]
    x = torch.randn((B, *shape), generator=generator).to(cond.text.device)
    if t_start is not None:
        abar = prior.scheduler.alphas_cumprod[int(timesteps[0])].to(x)
        mean = torch.zeros_like(x) if mean_latent is None else mean_latent.to(x)
        x = abar.sqrt() * mean + (1 - abar).sqrt() * x
    for t in tqdm(timesteps, desc=progress, unit=" steps", disable=True if progress is None else None, leave=False,
                  dynamic_ncols=True):
        tt = torch.full((B,), int(t), device=x.device, dtype=torch.long)
        eps = guided_noise(prior, x, tt, cond, guidance_scale).eps
        x = scheduler.step(eps, t, x).prev_sample
    return prior.decode(x).clamp(0, 1)
