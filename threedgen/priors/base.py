"""The prior interface every caller talks to (guidance, prompts, systems, the world's checks, the
CLI and benchmarks), and the errors and prompt helpers all families share.

``Prior`` below is the complete interface: everything code outside ``threedgen/priors/`` reads
from a prior. Each family implements it as one small adapter over the shared diffusers base
(``threedgen.priors.diffusion.DiffusionPrior``); ``threedgen.registry.PRIOR_FAMILIES`` lists them.
A prior is also an ``nn.Module``: it moves with ``.to()``, and its parameters are frozen.

Shapes: B a batch, L x D a text embedding, C x h x w what the diffusion runs on (a VAE latent, or
pixels), R the ``resolution`` renders are resized to, f = ``factor`` (h = w = R / f), T the
frames of a video clip (video priors take clips [B, 3, T, R, R] and [B, C, T, h, w] wherever an
image prior takes [B, 3, R, R] and [B, C, h, w]), Dc = ``camera_dim``.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Protocol

from diffusers import DDPMScheduler
from torch import Tensor, nn

from threedgen.cameras import Cameras


def cache_root() -> Path:
    """Where threedgen caches derived files (text embeddings, converted checkpoints):
    $THREEDGEN_CACHE, default ~/.cache/threedgen."""
    return Path(os.environ.get("THREEDGEN_CACHE", Path.home() / ".cache" / "threedgen"))


class PromptError(ValueError):
    """A prompt the prior cannot read (e.g. a word outside a closed vocabulary)."""


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt, lower-cased, punctuation dropped: how a closed-vocabulary prior
    reads it, and how evaluation finds its shape and colour ("a red cube." -> a, red, cube)."""
    return re.findall(r"[\w']+", prompt.lower())


def unreadable(prompt: str) -> list[str]:
    """Characters of a prompt that are neither word characters, spaces nor punctuation (an
    emoji): a closed-vocabulary prior has no token for them."""
    return sorted({c for c in prompt if not (c.isspace() or c in string.punctuation or re.match(r"\w", c))})


class PriorLoadError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt; the message says which and where."""


class Prior(Protocol):
    """A frozen text-to-image (or text-to-video, or multi-view) diffusion model, as callers see it."""

    resolution: int  # R: renders are resized to R x R before ``encode_images``
    factor: int  # f: the codec's downsampling (x is [B, C, R/f, R/f]; 1 for pixel-space priors)
    num_train_timesteps: int  # T_train: timesteps are integers in [0, T_train)
    alphas_cumprod: Tensor  # [T_train] abar_t of the training schedule, on the prior's device
    has_camera: bool  # camera-conditioned (the embedded priors with a camera input, MVDream)
    camera_dim: int  # Dc, the width of ``camera_condition``'s features; 0 without
    num_views: int  # V, images denoised jointly (MVDream: 4); batches come in groups of V
    video: bool  # a text-to-video prior: it takes clips, one timestep per clip
    world: dict | None  # the embedded world's description (world.json: vocabulary, frames, camera
    #                     ranges, training options); None for priors trained elsewhere
    vocabulary: list[str] | None  # a closed vocabulary (the embedded priors), else None
    text_encoder_id: str | None  # names the text encoder(s) for the embedding cache; None: no cache
    unet: nn.Module  # the diffusers UNet (VSD trains a LoRA copy of it)
    scheduler: DDPMScheduler  # the schedule it was trained with (its config: betas,
    #                           ``prediction_type``); sampling and VSD read it

    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError for a prompt the text encoder would not read whole (a word outside a
        closed vocabulary, a character it has no token for, more tokens than it reads)."""

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """B prompts ("" is the unconditional one) -> text [B, L, D] on the prior's device and
        dtype; each prompt is checked first (``check_prompt``)."""

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> x [B, C, R/f, R/f], differentiable (clips: per frame)."""

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> rgb [B, 3, R, R], about [0, 1] (unclamped); clips per frame."""

    def camera_condition(self, cameras: Cameras | None, batch: int, null: bool = False) -> Tensor | None:
        """B cameras -> [B, Dc] camera features; with ``null`` (or no cameras) what CFG's
        unconditional branch gets (zeros for the embedded priors; the cameras themselves for
        MVDream, which has no null camera); None for priors without camera conditioning."""

    def predict_noise(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B, C, h, w], t [B] integer timesteps, text [B, L, D], camera [B, Dc] | None ->
        eps [B, C, h, w] in float32: always epsilon (v-prediction is converted)."""

    def run_unet(self, unet: nn.Module, x_t: Tensor, t: Tensor, text: Tensor,
                 class_labels: Tensor | None) -> Tensor:
        """A UNet of the prior's family (its own, or a trained copy such as VSD's LoRA) on x_t
        [B, C, h, w] with the family's conditioning -> its raw prediction [B, C, h, w] in float32
        (epsilon or v, as that UNet predicts). class_labels [B, Dc']: the camera features, or a
        copy's own camera embedding input."""
