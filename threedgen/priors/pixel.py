"""Pixel-space priors in the shape of DeepFloyd IF stage I (Saharia et al. 2022; DeepFloyd 2023):
no ``vae/``, the UNet runs on the image itself in [-1, 1]; any text encoder class transformers
names in its config (IF: T5EncoderModel); a UNet that also predicts its variance returns 2C
channels, of which ``run_unet`` keeps the first C (eps)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from threedgen.priors.diffusion import DiffusionPrior


class PixelSpace(DiffusionPrior):
    """x = rgb * 2 - 1: [B, 3, R, R], f = 1."""

    factor = 1

    @staticmethod
    def detects(folder: Path) -> bool:
        return not (folder / "vae").is_dir()

    @classmethod
    def load_vae(cls, folder: Path, dtype: torch.dtype) -> None:
        return None

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> x [B, 3, R, R] in [-1, 1]."""
        return rgb * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        """x [B, 3, R, R] -> rgb in [0, 1] (unclamped)."""
        return (x + 1) / 2
