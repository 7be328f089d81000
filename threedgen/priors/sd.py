"""Stable Diffusion 1.x / 2.x (Rombach et al. 2022): the UNet runs on an AutoencoderKL's latents,
conditioned on one CLIP text encoder's last hidden state; epsilon or v-prediction (2.x 768).

``StableDiffusion`` is also the latent codec the other latent families build on (SDXL, MVDream,
text-to-video): x = the VAE's scaled posterior mean, [B, 4, R/8, R/8] for SD's VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from threedgen.priors.diffusion import DiffusionPrior


class StableDiffusion(DiffusionPrior):
    """vae: an AutoencoderKL; f = 2^(levels - 1)."""

    @staticmethod
    def detects(folder: Path) -> bool:
        return True  # the layout's plain case: whatever no other family claims (last in the table)

    @classmethod
    def load_vae(cls, folder: Path, dtype: torch.dtype) -> AutoencoderKL:
        return AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> the scaled posterior mean [B, C, R/f, R/f] in float32
        (the mean, not a sample, so that a step is reproducible); differentiable."""
        latent = self.vae.encode((rgb * 2 - 1).to(self.vae.dtype)).latent_dist.mean
        return (latent * self.vae.config.scaling_factor).float()

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> rgb [B, 3, R, R] in [0, 1] (unclamped), float32."""
        return (self.vae.decode((x / self.vae.config.scaling_factor).to(self.vae.dtype)).sample.float() + 1) / 2

    def set_memory_options(self, attention_slicing: bool = False, vae_tiling: bool = False,
                           vae_slicing: bool = False, cpu_offload: bool = False) -> None:
        """The base's options, and the VAE's tiling (large images tile by tile) and slicing (a
        batch one image at a time)."""
        if vae_tiling:
            self.vae.enable_tiling()
        if vae_slicing:
            self.vae.enable_slicing()
        super().set_memory_options(attention_slicing, cpu_offload=cpu_offload)
