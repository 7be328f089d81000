"""What every guidance method shares: its inputs, its output, and the CFG convention.

Classifier-free guidance follows diffusers: eps = eps_u + w (eps_c - eps_u), where the
conditional branch sees (prompt, camera) and the unconditional one sees (negative prompt or "",
null camera). Guiding on the joint condition also amplifies the camera's effect, which helps a
weakly camera-aware prior; setting ``use_camera: false`` in a method's config gives both branches
the null camera (the Janus control).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from threedgen.priors.base import Prior


@dataclass(frozen=True)
class Conditioning:
    """Per-view conditions for a batch of B renders.

    text, uncond: [B, L, D] prompt embeddings (uncond = negative prompt or "");
    camera, null_camera: [B, Dc] the prior's camera features, or None for priors without them.
    """

    text: Tensor
    uncond: Tensor
    camera: Tensor | None
    null_camera: Tensor | None


@dataclass(frozen=True)
class GuidanceOutput:
    """loss: scalar whose gradient w.r.t. the renders is the method's G (summed over pixels, mean
    over views); grad_norm: mean per-view L2 norm of G; timesteps [B] the integer t used;
    prior_evals: images pushed through the prior's denoiser (a CFG pair counts 2)."""

    loss: Tensor
    grad_norm: float
    timesteps: Tensor
    prior_evals: int


def guided_noise(prior: Prior, x_t: Tensor, t: Tensor, cond: Conditioning, scale: float,
                 use_camera: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """One batched prior call for both CFG branches.

    x_t [B, C, h, w], t [B] -> (eps_cfg, eps_c, eps_u), each [B, C, h, w].
    """
    cam_c = cond.camera if use_camera else cond.null_camera
    camera = None if cam_c is None else torch.cat([cam_c, cond.null_camera])
    eps = prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]),
                              torch.cat([cond.text, cond.uncond]), camera)
    eps_c, eps_u = eps.chunk(2)
    return eps_u + scale * (eps_c - eps_u), eps_c, eps_u


def inject(x: Tensor, grad: Tensor) -> Tensor:
    """Loss whose gradient w.r.t. x is grad / B: 0.5 * ||x - (x - grad).detach()||^2 / B."""
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


def weight(kind: str, alphas_cumprod_t: Tensor) -> Tensor:
    """w(t) [B] for the named weighting: "sds" 1 - a_t (DreamFusion), "uniform" 1,
    "fantasia" sqrt(a_t) (1 - a_t) (Fantasia3D)."""
    a = alphas_cumprod_t
    if kind == "sds":
        return 1 - a
    if kind == "uniform":
        return torch.ones_like(a)
    if kind == "fantasia":
        return a.sqrt() * (1 - a)
    raise ValueError(f"unknown weighting {kind!r}")


def sample_timesteps(batch: int, t_min: float, t_max: float, num_train_timesteps: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """[B] integer t uniform in [t_min, t_max] * T."""
    lo, hi = int(t_min * num_train_timesteps), int(t_max * num_train_timesteps)
    return torch.randint(lo, max(hi, lo + 1), (batch,), generator=generator)
