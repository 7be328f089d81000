"""Classifier-free guidance: the conditions a batch of views is denoised under, and the guided
noise prediction, in one batched prior call.

The convention follows diffusers: eps = eps_u + w (eps_c - eps_u), where the conditional branch
sees (prompt, camera) and the unconditional one sees (negative prompt or "", null camera).
Guiding on the joint condition also amplifies the camera's effect, which helps a weakly
camera-aware prior; ``use_camera=False`` gives both branches the null camera (the Janus
control). With Perp-Neg (``Conditioning.perp_neg``) each negative's component perpendicular to
the positive direction is subtracted (Armandpour et al. 2023):

    eps = eps_u + w [(eps_c - eps_u) - sum_i w_i perp(eps_i - eps_u, eps_c - eps_u)]

Used by every guidance method and by sampling (``priors.sampling``, ``check-prior``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from threedgen.priors.base import Prior


@dataclass(frozen=True)
class Conditioning:
    """Per-view conditions for a batch of B renders.

    text: [B, L, D] the prompt, per view (view-dependent prompts differ between views);
    null_text: [B, L, D] the empty prompt "";
    camera, null_camera: [B, Dc] the prior's camera features, or None for priors without them;
    negative: [B, L, D] the negative prompt, or None;
    pose: [B, 16] flattened c2w of each view (zeros when unknown), for guidance modules that learn
        their own camera embedding (VSD's LoRA);
    perp_neg: Perp-Neg's negatives, ((text_i [B, L, D], weight_i [B]), ...); empty when off.
    """

    text: Tensor
    null_text: Tensor
    camera: Tensor | None
    null_camera: Tensor | None
    negative: Tensor | None = None
    pose: Tensor | None = None
    perp_neg: tuple[tuple[Tensor, Tensor], ...] = field(default=())

    @property
    def uncond(self) -> Tensor:
        """[B, L, D] what CFG's unconditional branch sees: the negative prompt, else ""."""
        return self.negative if self.negative is not None else self.null_text


class Guided(NamedTuple):
    """CFG result, each [B, C, h, w]: the guided eps, the conditional and the unconditional
    branch; evals: images pushed through the prior."""

    eps: Tensor
    eps_c: Tensor
    eps_u: Tensor
    evals: int


def predict_branches(prior: Prior, x_t: Tensor, t: Tensor,
                     branches: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
    """One batched prior call for K (text [B, L, D], camera [B, Dc] | None) branches that share
    x_t [B, C, h, w] and t [B] -> K eps tensors [B, C, h, w]."""
    K = len(branches)
    cams = [c for _, c in branches]
    camera = None if cams[0] is None else torch.cat(cams)
    eps = prior.predict_noise(x_t.repeat(K, *[1] * (x_t.dim() - 1)), t.repeat(K),
                              torch.cat([text for text, _ in branches]), camera)
    return list(eps.chunk(K))


def perpendicular(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample component of a [B, ...] perpendicular to b [B, ...]."""
    dot = (a * b).flatten(1).sum(1) / b.flatten(1).pow(2).sum(1).clamp_min(1e-12)
    return a - dot.view(-1, *[1] * (a.dim() - 1)) * b


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


def guided_noise(prior: Prior, x_t: Tensor, t: Tensor, cond: Conditioning, scale: float,
                 use_camera: bool = True) -> Guided:
    """Classifier-free guidance (with Perp-Neg when ``cond.perp_neg``), in one batched prior call.

    x_t [B, C, h, w], t [B] -> Guided(eps, eps_c, eps_u, evals).
    """
    cam_c = cond.camera if use_camera else cond.null_camera
    if not cond.perp_neg and torch.equal(cond.text, cond.uncond) and _same(cam_c, cond.null_camera):
        # Both branches see one condition (a still prompt against itself, 4D's motion-only CFG):
        # CFG returns it at any scale, so the prior runs once.
        (eps,) = predict_branches(prior, x_t, t, [(cond.text, cam_c)])
        return Guided(eps, eps, eps, len(x_t))
    branches = [(cond.text, cam_c), (cond.uncond, cond.null_camera)]
    branches += [(text, cam_c) for text, _ in cond.perp_neg]
    eps_c, eps_u, *eps_neg = predict_branches(prior, x_t, t, branches)
    e_pos = eps_c - eps_u
    direction = e_pos
    for (_, w_i), eps_i in zip(cond.perp_neg, eps_neg):
        direction = direction - bcast(w_i, e_pos) * perpendicular(eps_i - eps_u, e_pos)
    return Guided(eps_u + scale * direction, eps_c, eps_u, len(branches) * len(x_t))


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample values [B] -> [B, 1, ...], broadcastable against ``like`` [B, C, h, w] (images)
    or [B, C, T, h, w] (video clips)."""
    return v.view(-1, *[1] * (like.dim() - 1))
