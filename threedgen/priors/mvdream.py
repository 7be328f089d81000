"""MVDream (Shi et al. 2023, arXiv:2308.16512): Stable Diffusion 2.1 fine-tuned to denoise groups of
4 views of one object jointly, conditioned on each view's camera.

In diffusers terms an MVDream UNet is a ``UNet2DConditionModel`` with

- a camera embedding added to the time embedding: MVDream's ``camera_embed`` (Linear, SiLU,
  Linear on the flattened 4x4 camera-to-world) is exactly diffusers' projected class embedding
  (``class_embed_type="projection"``, input 16), so the converted UNet saves and loads as usual;
- self-attention across the views of a group: ``MultiViewAttnProcessor`` on every ``attn1``
  concatenates the tokens of the group's V views, so each view attends to all of them.

A converted folder is Stable Diffusion's layout plus ``multiview.json`` ({"num_views": 4}): the
``MVDream`` family detects it, installs the processor and feeds each view's camera.
``convert_mvdream_checkpoint`` turns MVDream's released single file (LDM keys
``model.diffusion_model.*``, ``camera_embed.0/2``) into such a folder; the VAE, text encoder,
tokenizer and scheduler, which MVDream did not train, come from a Stable Diffusion 2.1 base folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor

from threedgen.cameras import Cameras
from threedgen.priors.base import PriorLoadError, cache_root
from threedgen.priors.diffusion import read_config, resolve_checkpoint, resolve_file
from threedgen.priors.sd import StableDiffusion

MULTIVIEW = "multiview.json"
LDM_PREFIX = "model.diffusion_model."
CAMERA_KEYS = {"camera_embed.0.weight": "class_embedding.linear_1.weight",
               "camera_embed.0.bias": "class_embedding.linear_1.bias",
               "camera_embed.2.weight": "class_embedding.linear_2.weight",
               "camera_embed.2.bias": "class_embedding.linear_2.bias"}


class MultiViewAttnProcessor:
    """Self-attention over all tokens of a group of ``num_views`` consecutive images:
    hidden [B*V, N, C] -> attention on [B, V*N, C] -> [B*V, N, C]. Cross-attention (to the text)
    stays per view."""

    def __init__(self, num_views: int):
        self.num_views = num_views
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        if encoder_hidden_states is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        BV, N, C = hidden_states.shape
        V = self.num_views
        if BV % V:
            raise ValueError(f"multi-view attention: batch {BV} is not a multiple of {V} views")
        out = self.inner(attn, hidden_states.reshape(BV // V, V * N, C), None, attention_mask, temb)
        return out.reshape(BV, N, C)


def install_multiview_attention(unet: UNet2DConditionModel, num_views: int) -> None:
    """MultiViewAttnProcessor on every self-attention (attn1), the default on the rest."""
    unet.set_attn_processor({name: MultiViewAttnProcessor(num_views) if name.endswith("attn1.processor")
                             else AttnProcessor2_0() for name in unet.attn_processors})


def mvdream_camera(cameras: Cameras) -> Tensor:
    """[B] cameras -> [B, 16]: the OpenGL camera-to-world with its translation scaled to unit length
    (MVDream's "rotation" camera condition), flattened. Our world is z-up with OpenGL cameras, as
    threestudio's, whose MVDream guidance feeds this to the released weights."""
    c2w = cameras.c2w.clone()
    c2w[:, :3, 3] = c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    return c2w.reshape(len(c2w), 16)


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def convert_mvdream_checkpoint(checkpoint: Path, base: Path, out: Path, num_views: int = 4) -> Path:
    """MVDream single file + a Stable Diffusion 2.1 base folder -> a diffusers folder at ``out``.

    The UNet takes its config from ``base/unet`` plus the projected camera embedding; its
    weights from the file's ``model.diffusion_model.*`` keys (diffusers' LDM converter) and
    ``camera_embed.*``. The other components are copied from ``base``."""
    state = _read_state_dict(Path(checkpoint))
    if not any(k.startswith(LDM_PREFIX) for k in state):
        raise PriorLoadError(f"{checkpoint}: no {LDM_PREFIX}* keys; not an MVDream / LDM checkpoint")
    config = dict(UNet2DConditionModel.load_config(base, subfolder="unet"))
    unet_state = convert_ldm_unet_checkpoint(state, config)  # SD 2.1's own layout; the camera is added below
    config.update(class_embed_type="projection", projection_class_embeddings_input_dim=16)
    for src, dst in CAMERA_KEYS.items():
        if LDM_PREFIX + src not in state:
            raise PriorLoadError(f"{checkpoint}: missing {LDM_PREFIX + src}; not an MVDream checkpoint")
        unet_state[dst] = state[LDM_PREFIX + src]
    unet = UNet2DConditionModel.from_config(config)
    missing, unexpected = unet.load_state_dict(unet_state, strict=False)
    if missing or unexpected:
        raise PriorLoadError(f"{checkpoint}: does not fit {base}/unet's config "
                             f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[0]})")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(base / part, tmp / part)
    unet.save_pretrained(tmp / "unet")
    (tmp / MULTIVIEW).write_text(json.dumps({"num_views": num_views}))
    tmp.replace(out)
    return out


def converted_folder(checkpoint: Path, base: Path, cache: Path) -> Path:
    """The converted folder for (checkpoint, base), made once under ``cache``."""
    st = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}|{base.resolve()}".encode()).hexdigest()[:16]
    out = cache / f"mvdream-{key}"
    return out if (out / MULTIVIEW).is_file() else convert_mvdream_checkpoint(checkpoint, base, out)


def mvdream_folder(cfg) -> Path:
    """name: mvdream (threedgen.registry.PRIOR_SOURCES): MVDream's single file ``cfg.path`` and
    the Stable Diffusion 2.1 base ``cfg.base`` -> their converted folder, made once."""
    return converted_folder(resolve_file(cfg.path), resolve_checkpoint(cfg.base), cache_root() / "priors")


class MVDream(StableDiffusion):
    """SD 2.1's latents and text, each view's camera [B, 16] as the class label, self-attention
    across each group of ``num_views`` consecutive images. MVDream has no null camera: CFG's
    unconditional branch sees the cameras too."""

    has_camera, camera_dim = True, 16

    def __init__(self, unet: UNet2DConditionModel, text_encoders: list, tokenizers: list, scheduler, vae,
                 resolution: int | None = None, num_views: int = 4):
        super().__init__(unet, text_encoders, tokenizers, scheduler, vae, resolution)
        self.num_views = num_views
        install_multiview_attention(self.unet, num_views)

    @staticmethod
    def detects(folder: Path) -> bool:
        return (folder / MULTIVIEW).is_file()

    @classmethod
    def load_parts(cls, folder: Path, dtype: torch.dtype) -> dict:
        return {**super().load_parts(folder, dtype), "num_views": read_config(folder, MULTIVIEW)["num_views"]}

    def camera_condition(self, cameras: Cameras | None, batch: int, null: bool = False) -> Tensor:
        """[B] cameras -> [B, 16] (``mvdream_camera``), for ``null`` too."""
        if cameras is None:
            raise ValueError("a multi-view prior needs the views' cameras")
        return mvdream_camera(cameras).to(self.alphas_cumprod.device)
