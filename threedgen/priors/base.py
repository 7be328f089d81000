"""The prior interface every guidance method talks to.

A prior is a frozen diffusion model seen through four calls:

- ``encode_prompts(prompts) -> Tensor [B, L, D]``: text embeddings ("" is the unconditional one);
- ``encode_images(rgb [B, 3, H, W] in [0, 1]) -> x [B, C, h, w]``: what the diffusion runs on,
  differentiable (a VAE latent, or pixels for pixel-space priors);
- ``predict_noise(x_t, t [B], text [B, L, D], camera [B, Dc] | None) -> eps [B, C, h, w]``: always
  epsilon, whatever the checkpoint predicts (v-prediction is converted);
- ``camera_condition(cameras | None, batch, null=False) -> Tensor [B, Dc] | None``: the prior's
  camera features; with ``null`` (or no cameras) what CFG's unconditional branch gets (zeros for
  the embedded prior; the cameras themselves for MVDream, which has no null camera); ``None`` for
  priors without camera conditioning;
- ``run_unet(unet, x_t, t, text, class_labels) -> raw prediction``: a UNet of the prior's family
  (its own or a trained copy such as VSD's LoRA) called with the prior's conditioning conventions;
- ``unet``, ``scheduler``: the diffusers parts (VSD copies the UNet; sampling reads the schedule).

and ``alphas_cumprod [T]`` with ``num_train_timesteps = T``, ``resolution``, the image size
its ``encode_images`` expects (renders are resized to it by the guidance), ``has_camera``,
``camera_dim`` and ``num_views`` (see ``Prior``).
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Protocol

from torch import Tensor

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
    resolution: int
    num_train_timesteps: int
    alphas_cumprod: Tensor
    has_camera: bool  # camera-conditioned (the embedded prior, MVDream)
    camera_dim: int  # width of camera_condition's features; 0 without
    num_views: int  # images denoised jointly (MVDream: 4); batches come in groups of this size

    def encode_prompts(self, prompts: list[str]) -> Tensor: ...

    def encode_images(self, rgb: Tensor) -> Tensor: ...

    def decode(self, x: Tensor) -> Tensor: ...

    def predict_noise(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor: ...

    def camera_condition(self, cameras: Cameras | None, batch: int, null: bool = False) -> Tensor | None: ...

    def run_unet(self, unet, x_t: Tensor, t: Tensor, text: Tensor, class_labels: Tensor | None) -> Tensor: ...
