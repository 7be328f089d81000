"""What every guidance method shares: its output, and the diffusion arithmetic (noising, DDIM
hops) the methods are written in. The classifier-free-guidance vocabulary (``Conditioning``,
``guided_noise``, ``predict_branches``) lives one layer down, in ``threedgen.priors.cfg``: priors
sample with it too.

Notation in the method files: x is what the prior sees (pixels or a latent),
x_t = sqrt(a_t) x + sqrt(1 - a_t) eps with a_t = alphas_cumprod[t], w(t) the weighting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threedgen.priors.base import Prior
from threedgen.priors.cfg import bcast


@dataclass(frozen=True)
class GuidanceOutput:
    """loss: scalar whose gradient w.r.t. the renders is the method's G (summed over pixels, mean
    over views), plus any loss of the guidance's own trainable parts (VSD's LoRA), which does not
    reach the renders; grad_norm: mean per-view L2 norm of G; timesteps [B] the integer t used;
    prior_evals: images pushed through a denoiser (a CFG pair counts 2, a LoRA training image 1);
    logs: extra scalars for the progress log."""

    loss: Tensor
    grad_norm: float
    timesteps: Tensor
    prior_evals: int
    logs: dict = field(default_factory=dict)


class Guidance(nn.Module):
    """A guidance method: ``forward(rgb, cond, step, generator) -> GuidanceOutput``.

    Methods with trainable parts of their own (VSD's LoRA) set ``trains_model`` and return their
    optimizers from ``optimizers()``; the system steps them with the representation's."""

    trains_model = False

    def __init__(self, cfg, prior: Prior):
        super().__init__()
        self.cfg, self.prior = cfg, prior

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}


def to_prior_input(prior: Prior, rgb: Tensor) -> Tensor:
    """rgb [B, 3, H, W] (or clips [B, 3, T, H, W]) in [0, 1] -> x [B, C, h, w] ([B, C, T, h, w]):
    resized to the prior's resolution (antialiased, frame by frame) and encoded, differentiably."""
    if rgb.shape[-1] != prior.resolution:
        frames = rgb.transpose(1, 2).flatten(0, 1) if rgb.dim() == 5 else rgb  # [B*T, 3, H, W]
        frames = F.interpolate(frames, (prior.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        rgb = frames.unflatten(0, (len(rgb), -1)).transpose(1, 2) if rgb.dim() == 5 else frames
    return prior.encode_images(rgb)


def encode_and_draw(prior: Prior, rgb: Tensor, t_min: float, t_max: float,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """The start of a noise-based method's step: rgb [B, 3, H, W] -> (x [B, C, h, w] encoded,
    differentiable; t [B] ~ U[t_min, t_max] * T; eps [B, C, h, w] ~ N(0, I)), drawn in that order."""
    x = to_prior_input(prior, rgb)
    return x, draw_timesteps(prior, len(x), t_min, t_max, generator).to(x.device), \
        torch.randn(x.shape, generator=generator).to(x)


def draw_timesteps(prior: Prior, batch: int, t_min: float, t_max: float,
                   generator: torch.Generator | None) -> Tensor:
    """[B] integer t ~ U[t_min, t_max] * T, one per view, or one per group of views for a
    multi-view prior (its views are denoised jointly, at one noise level)."""
    V = prior.num_views
    return sample_timesteps(batch // V, t_min, t_max, prior.num_train_timesteps, generator).repeat_interleave(V)


def inject(x: Tensor, grad: Tensor) -> Tensor:
    """Loss whose gradient w.r.t. x is grad / B: 0.5 * ||x - (x - grad).detach()||^2 / B."""
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


def output(x: Tensor, grad: Tensor, t: Tensor, evals: int, extra_loss: Tensor | None = None,
           logs: dict | None = None) -> GuidanceOutput:
    """The GuidanceOutput that injects G = grad [B, C, h, w] into x."""
    loss = inject(x, grad) if extra_loss is None else inject(x, grad) + extra_loss
    return GuidanceOutput(loss, grad.flatten(1).norm(dim=1).mean().item(), t, evals, logs or {})


def clip_pixel_grad(rgb: Tensor, clip: float) -> Tensor:
    """rgb unchanged, but the gradient flowing back into it is clamped to [-clip, clip] per pixel
    and channel (Dreamer XL's pixel-by-pixel clipping); clip 0 = off."""
    if clip <= 0 or not rgb.requires_grad:
        return rgb
    rgb = rgb.view_as(rgb)  # a new node, so the hook touches only this path
    rgb.register_hook(lambda g: g.clamp(-clip, clip))
    return rgb


def weight(kind: str, alphas_cumprod_t: Tensor) -> Tensor:
    """w(t) [B] for the named weighting: "sds" 1 - a_t (DreamFusion), "uniform" 1,
    "fantasia" sqrt(a_t) (1 - a_t) (Fantasia3D), "ism" sqrt((1 - a_t) / a_t) (LucidDreamer)."""
    a = alphas_cumprod_t
    if kind == "sds":
        return 1 - a
    if kind == "uniform":
        return torch.ones_like(a)
    if kind == "fantasia":
        return a.sqrt() * (1 - a)
    if kind == "ism":
        return ((1 - a) / a).sqrt()
    raise ValueError(f"unknown weighting {kind!r}")


def sample_timesteps(batch: int, t_min: float, t_max: float, num_train_timesteps: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """[B] integer t uniform in [t_min, t_max] * T."""
    lo, hi = int(t_min * num_train_timesteps), int(t_max * num_train_timesteps)
    return torch.randint(lo, max(hi, lo + 1), (batch,), generator=generator)


def add_noise(x: Tensor, noise: Tensor, a: Tensor) -> Tensor:
    """x_t = sqrt(a) x + sqrt(1 - a) noise, with a [B] the alphas_cumprod of each sample's t."""
    return bcast(a, x).sqrt() * x + bcast(1 - a, x).sqrt() * noise


def ddim_hop(x: Tensor, eps: Tensor, a_from: Tensor, a_to: Tensor) -> Tensor:
    """Deterministic DDIM (eta = 0) from noise level a_from to a_to, each [B] alphas_cumprod:

        x0_hat = (x - sqrt(1 - a_from) eps) / sqrt(a_from);   x' = sqrt(a_to) x0_hat + sqrt(1 - a_to) eps

    Downwards (a_to > a_from) it is a DDIM sampling step; upwards, with eps predicted at the
    lower level, it is a DDIM inversion step. Written out rather than taken from diffusers'
    DDIMScheduler / DDIMInverseScheduler: those step along one fixed grid shared by the batch,
    while ISM and TSM hop between per-view timesteps."""
    x0 = (x - bcast(1 - a_from, x).sqrt() * eps) / bcast(a_from, x).sqrt()
    return bcast(a_to, x).sqrt() * x0 + bcast(1 - a_to, x).sqrt() * eps
