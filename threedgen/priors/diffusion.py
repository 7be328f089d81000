"""Pixel-space diffusion priors in Stable Diffusion's folder layout; the embedded prior is one.

The folder holds ``unet/`` (UNet2DConditionModel), ``text_encoder/`` (CLIPTextModel),
``tokenizer/``, ``scheduler/`` and an optional ``vae/`` that is a lossless ``PixelShuffleCodec``
(absent for true pixel models). An optional ``world.json`` declares a closed vocabulary and the
camera features the UNet's projected class embedding was trained on (the embedded prior).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextModel

from threedgen.cameras import Cameras
from threedgen.priors.base import PriorLoadError, PromptError
from threedgen.priors.embedded.model import CAMERA_DIM, PixelShuffleCodec, camera_embedding

EMBEDDED_PATH = Path(__file__).parent / "embedded" / "weights"


class DiffusionPrior(nn.Module):
    """Frozen pixel-space prior. See ``threedgen.priors.base`` for the interface."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer,
                 scheduler: DDPMScheduler, codec: PixelShuffleCodec | None, world: dict | None):
        super().__init__()
        self.unet, self.text_encoder, self.codec = unet, text_encoder, codec
        self.tokenizer, self.scheduler, self.world = tokenizer, scheduler, world
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        factor = codec.config.factor if codec is not None else 1
        self.resolution = unet.config.sample_size * factor
        self.vocabulary = world["vocabulary"] if world else None
        self.text_encoder_id: str | None = None  # names the text encoder for the embedding cache
        self.has_camera = (unet.config.class_embed_type == "projection"
                           and unet.config.projection_class_embeddings_input_dim == CAMERA_DIM
                           and world is not None)

    @classmethod
    def from_pretrained(cls, path: str | Path = EMBEDDED_PATH) -> DiffusionPrior:
        path = Path(path)
        if not path.is_dir():
            raise PriorLoadError(f"prior folder {path} does not exist")
        for sub, weights in [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")]:
            if not (path / sub / weights).is_file():
                raise PriorLoadError(f"prior {path}: missing weights file {sub}/{weights}; "
                                     "run `threedgen train-prior` or reinstall the package")
        loaders = {"unet": UNet2DConditionModel.from_pretrained, "text_encoder": CLIPTextModel.from_pretrained,
                   "tokenizer": AutoTokenizer.from_pretrained, "scheduler": DDPMScheduler.from_pretrained,
                   "vae": _load_codec}
        parts = {}
        for sub, loader in loaders.items():
            if sub == "vae" and not (path / sub).is_dir():
                parts[sub] = None  # a true pixel-space model: no codec
                continue
            try:
                parts[sub] = loader(path, subfolder=sub)
            except Exception as e:  # safetensors / json / shape errors all mean a broken checkpoint
                first = str(e).splitlines()[0] if str(e) else ""
                raise PriorLoadError(f"prior {path}: cannot load {sub}/ ({type(e).__name__}: {first})") from e
        world = json.loads((path / "world.json").read_text()) if (path / "world.json").is_file() else None
        prior = cls(parts["unet"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"], parts["vae"], world)
        weights = (path / "text_encoder" / "model.safetensors").stat()
        prior.text_encoder_id = f"{path.resolve()}|{weights.st_size}|{weights.st_mtime_ns}"
        return prior

    # --- text -------------------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError for words outside a closed vocabulary (no-op for open ones)."""
        if self.vocabulary is None:
            return
        unknown = [w for w in re.findall(r"[\w']+", prompt.lower()) if w not in self.vocabulary]
        if unknown:
            raise PromptError(f"prompt {prompt!r}: unknown word{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))}; the prior's vocabulary is: "
                              f"{', '.join(self.vocabulary)}")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """prompts (B strings, "" = unconditional) -> [B, L, D] last hidden states."""
        for p in prompts:
            self.check_prompt(p)
        tokens = self.tokenizer([p.lower() for p in prompts], padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        device = self.alphas_cumprod.device
        return self.text_encoder(tokens.input_ids.to(device),
                                 attention_mask=tokens.attention_mask.to(device)).last_hidden_state

    # --- images -----------------------------------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> x [B, C, h, w] (differentiable)."""
        return self.codec.encode(rgb) if self.codec is not None else rgb * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> rgb [B, 3, R, R] in [0, 1] (unclamped)."""
        return self.codec.decode(x) if self.codec is not None else (x + 1) / 2

    # --- denoiser ---------------------------------------------------------------------------------
    def camera_condition(self, cameras: Cameras | None, batch: int) -> Tensor | None:
        """[B, CAMERA_DIM] camera features; zeros (the null camera) when ``cameras`` is None."""
        if not self.has_camera:
            return None
        if cameras is None:
            return torch.zeros(batch, CAMERA_DIM, device=self.alphas_cumprod.device)
        return camera_embedding(cameras).to(self.alphas_cumprod.device)

    def predict_noise(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B, C, h, w], t [B] integer timesteps, text [B, L, D], camera [B, Dc] -> eps [B, C, h, w]."""
        out = self.unet(x_t, t, text, class_labels=camera).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out


def _load_codec(path: Path, subfolder: str) -> PixelShuffleCodec:
    """The codec has no weights, only a config (diffusers' from_pretrained wants a weights file)."""
    return PixelShuffleCodec.from_config(PixelShuffleCodec.load_config(path, subfolder=subfolder))


def load_prior(cfg) -> DiffusionPrior:
    """Build the prior a ``PriorConfig`` names."""
    return DiffusionPrior.from_pretrained(cfg.path or EMBEDDED_PATH)
