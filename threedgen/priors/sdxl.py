"""SDXL (Podell et al. 2023): two text encoders (CLIP ViT-L and OpenCLIP bigG, ``text_encoder_2/``
with a projection), read at their penultimate layer and concatenated; the UNet's
``addition_embed_type`` "text_time" also takes the second encoder's pooled embedding and the
size/crop "time ids".

The pooled embedding travels inside the text tensor, so that everything that batches, picks or
caches prompt embeddings works unchanged: ``encode_prompts`` returns [B, L + 1, D], whose last row
holds the pooled embedding (zero-padded to D); ``unet_inputs`` splits it off again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from threedgen.priors.diffusion import read_config
from threedgen.priors.sd import StableDiffusion


class SDXL(StableDiffusion):
    """AutoencoderKL latents (``StableDiffusion``'s codec), SDXL's text and added conditioning."""

    @staticmethod
    def detects(folder: Path) -> bool:
        return read_config(folder, "unet/config.json").get("addition_embed_type") == "text_time"

    def encode_text(self, texts: list[str]) -> Tensor:
        """B texts -> [B, L + 1, D]: both encoders' penultimate layers [B, L, D_1 + D_2 = D], then
        the pooled row [B, 1, D] (the second encoder's text_embeds [B, P], zero-padded)."""
        outs = self.encoder_outputs(texts, hidden_states=True)
        text = torch.cat([out.hidden_states[-2] for out in outs], dim=-1)
        pooled = outs[-1].text_embeds
        row = torch.zeros(len(texts), 1, text.shape[-1])
        row[:, 0, :pooled.shape[-1]] = pooled
        return torch.cat([text, row], dim=1)

    def unet_inputs(self, unet: nn.Module, x_t: Tensor, text: Tensor,
                    class_labels: Tensor | None) -> tuple[Tensor, dict]:
        """Packed text [B, L + 1, D] -> hidden states [B, L, D] and ``added_cond_kwargs``: the
        pooled embedding [B, P] and the time ids [B, 6] of a full, uncropped R x R render
        (original height, width, crop top, left, target height, width)."""
        config = self.unet.config
        pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        R = self.resolution
        time_ids = torch.tensor([R, R, 0, 0, R, R], device=text.device, dtype=text.dtype).expand(len(text), 6)
        hidden, extra = super().unet_inputs(unet, x_t, text[:, :-1], class_labels)
        return hidden, {**extra, "added_cond_kwargs": {"text_embeds": text[:, -1, :pooled_dim], "time_ids": time_ids}}
