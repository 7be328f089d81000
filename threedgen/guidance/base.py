"""What every guidance method shares: its inputs, its output, the CFG convention and the
diffusion arithmetic (noising, DDIM hops) the methods are written in.

Classifier-free guidance follows diffusers: eps = eps_u + w (eps_c - eps_u), where the
conditional branch sees (prompt, camera) and the unconditional one sees (negative prompt or "",
null camera). Guiding on the joint condition also amplifies the camera's effect, which helps a
weakly camera-aware prior; setting ``use_camera: false`` in a method's config gives both branches
the null camera (the Janus control). With Perp-Neg (``Conditioning.perp_neg``) each negative's
component perpendicular to the positive direction is subtracted (Armandpour et al. 2023):

    eps = eps_u + w [(eps_c - eps_u) - sum_i w_i perp(eps_i - eps_u, eps_c - eps_u)]

Notation in the method files: x is what the prior sees (pixels or a latent),
x_t = sqrt(a_t) x + sqrt(1 - a_t) eps with a_t = alphas_cumprod[t], w(t) the weighting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample values [B] -> [B, 1, ...], broadcastable against ``like`` [B, C, h, w] (images)
    or [B, C, T, h, w] (video clips)."""
    return v.view(-1, *[1] * (like.dim() - 1))


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
