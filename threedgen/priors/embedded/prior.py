"""The embedded world's priors (``model.py`` has their architecture, ``threedgen.world`` their
training): Stable Diffusion's folder layout plus ``world.json``, the world they were trained on.

- The codec is the lossless ``PixelShuffleCodec``: pixels [B, 3, R, R] in [0, 1] <-> [B, 3f^2,
  R/f, R/f] in [-1, 1].
- The vocabulary is closed (``world.json``'s "vocabulary"): a prompt is read as its words alone,
  and a word outside it is a PromptError that lists the vocabulary.
- The camera is the world's features (``model.camera_embedding``, [B, CAMERA_DIM]; the all-zero
  vector is the null camera), when the UNet has a camera input of that width: the image prior's
  projected class embedding, the video prior's ``timestep_cond`` (``video.VideoFrames``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.priors.base import PromptError, prompt_words, unreadable
from threedgen.priors.diffusion import DiffusionPrior, read_config
from threedgen.priors.embedded.model import CAMERA_DIM, PixelShuffleCodec, camera_embedding
from threedgen.priors.video import VideoFrames

WORLD = "world.json"


class Embedded(DiffusionPrior):
    """world: the parsed ``world.json`` (vocabulary, shapes, colours, camera ranges, training
    options; the video prior's frames)."""

    def __init__(self, unet: nn.Module, text_encoders: list, tokenizers: list, scheduler, vae: PixelShuffleCodec,
                 resolution: int | None = None, *, world: dict):
        super().__init__(unet, text_encoders, tokenizers, scheduler, vae, resolution)
        self.world, self.vocabulary = world, world["vocabulary"]
        self.has_camera = self.camera_input_width(unet.config) == CAMERA_DIM
        self.camera_dim = CAMERA_DIM if self.has_camera else 0

    @staticmethod
    def detects(folder: Path) -> bool:
        return (folder / WORLD).is_file()

    @classmethod
    def load_parts(cls, folder: Path, dtype: torch.dtype) -> dict:
        return {**super().load_parts(folder, dtype), "world": read_config(folder, WORLD)}

    @classmethod
    def load_vae(cls, folder: Path, dtype: torch.dtype) -> PixelShuffleCodec:
        """A config, no weights."""
        return PixelShuffleCodec.from_config(PixelShuffleCodec.load_config(folder, subfolder="vae"))

    # --- text -------------------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        """PromptError for words outside the vocabulary or characters it has no token for (then
        the token count, as every prior)."""
        unknown = [w for w in prompt_words(prompt) if w not in self.vocabulary]
        if unknown:
            raise PromptError(f"prompt {prompt!r}: unknown word{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))}; the prior's vocabulary is: "
                              f"{', '.join(self.vocabulary)}")
        if unreadable(prompt):
            raise PromptError(f"prompt {prompt!r}: unreadable character(s) {' '.join(unreadable(prompt))}; "
                              "the prior reads words of its vocabulary")
        super().check_prompt(prompt)

    def text(self, prompt: str) -> str:
        """The vocabulary's words alone ("a red cube." -> "a red cube")."""
        return " ".join(prompt_words(prompt))

    # --- images -----------------------------------------------------------------------------------
    @property
    def factor(self) -> int:
        return self.vae.config.factor

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> x [B, 3f^2, R/f, R/f] in [-1, 1] (lossless)."""
        return self.vae.encode(rgb)

    def decode(self, x: Tensor) -> Tensor:
        """x [B, 3f^2, R/f, R/f] -> rgb [B, 3, R, R]."""
        return self.vae.decode(x)

    # --- camera -----------------------------------------------------------------------------------
    def camera_condition(self, cameras: Cameras | None, batch: int, null: bool = False) -> Tensor | None:
        """[B, CAMERA_DIM] world features; zeros (the null camera) for ``null`` or no cameras;
        None for a prior without the camera input."""
        if not self.has_camera:
            return None
        device = self.alphas_cumprod.device
        if cameras is None or null:
            return torch.zeros(batch, CAMERA_DIM, device=device)
        return camera_embedding(cameras).to(device)


class EmbeddedVideo(VideoFrames, Embedded):
    """The embedded text-to-video prior: a UNetMotionModel on clips of ``world["frames"]`` frames
    in the image prior's pixel-shuffle latents, the clip's camera as ``timestep_cond``."""

    @staticmethod
    def detects(folder: Path) -> bool:
        return VideoFrames.detects(folder) and Embedded.detects(folder)
