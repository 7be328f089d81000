"""Prompt processing: per-view text conditions for the guidance.

- Negative prompt: CFG's unconditional branch (``Conditioning.uncond``); C-SDS also reads it alone.
- View-dependent prompts (DreamFusion): "<prompt>, front view" / "side view" / "back view" /
  "overhead view", chosen per view by azimuth and elevation thresholds (azimuth 0 is the front,
  +x). Off by default for camera-conditioned priors: their camera input already says the view.
- Perp-Neg (Armandpour et al. 2023, arXiv:2304.04968), with view-dependent prompts: each view's
  CFG direction loses its components along the other views' prompts, perpendicular to its own.
  A back or side view is pushed away from "front view", a front view away from "back view";
  overhead views get no negatives. Two extra prior evaluations per view.
- Text embeddings are cached on disk, keyed by the text encoder (path and weights file) and the
  prompt, under $THREEDGEN_CACHE (default ~/.cache/threedgen)/text-embeddings.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from threedgen.cameras import Cameras
from threedgen.config import PromptConfig
from threedgen.schedules import ConfigError, value_at
from threedgen.priors.cfg import Conditioning
from threedgen.priors.base import cache_root, prompt_words
from threedgen import world

VIEWS = ("front", "side", "back", "overhead")


def cache_dir() -> Path:
    return cache_root() / "text-embeddings"


def encode_cached(prior, prompts: list[str], use_cache: bool = True) -> Tensor:
    """prompts -> [N, L, D] embeddings, each read from or written to the disk cache when the
    prior names its text encoder (``prior.text_encoder_id``)."""
    model = getattr(prior, "text_encoder_id", None)
    if not use_cache or model is None:
        return prior.encode_prompts(prompts)
    key = lambda p: hashlib.sha256(f"{model}|{p}".encode()).hexdigest()[:32]  # noqa: E731
    paths = [cache_dir() / f"{key(p)}.pt" for p in prompts]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        fresh = prior.encode_prompts([prompts[i] for i in missing])
        cache_dir().mkdir(parents=True, exist_ok=True)
        for i, emb in zip(missing, fresh):
            tmp = paths[i].with_suffix(f".{os.getpid()}.tmp")
            torch.save(emb.clone().cpu(), tmp)
            tmp.replace(paths[i])
    else:
        for p in prompts:
            prior.check_prompt(p)  # a cached prompt is still checked against the vocabulary
    device = prior.alphas_cumprod.device
    return torch.stack([torch.load(p, map_location=device, weights_only=True) for p in paths])


def view_index(cameras: Cameras, cfg: PromptConfig, step: int) -> Tensor:
    """[B] index into VIEWS for each camera."""
    az = (cameras.azimuth + 180) % 360 - 180  # (-180, 180]
    front, back = value_at(cfg.front_threshold, step), value_at(cfg.back_threshold, step)
    idx = torch.ones_like(az, dtype=torch.long)  # side
    idx[az.abs() < front] = 0
    idx[az.abs() > 180 - back] = 2
    idx[cameras.elevation > value_at(cfg.overhead_threshold, step)] = 3
    return idx


class PromptProcessor:
    """Encodes every prompt a run needs once (checked against the prior's vocabulary up front);
    ``conditioning(cameras, step)`` picks each view's."""

    def __init__(self, prior, prompt: str, negative_prompt: str = "", cfg: PromptConfig = PromptConfig()):
        self.prior, self.cfg = prior, cfg
        self.view_dependent = (not prior.has_camera) if cfg.view_dependent is None else cfg.view_dependent
        if cfg.perp_neg and not self.view_dependent:
            raise ConfigError("system.prompts.perp_neg: needs view-dependent prompts, which are off for "
                              "a camera-conditioned prior unless system.prompts.view_dependent is true")
        texts = [prompt, ""] + ([negative_prompt] if negative_prompt else [])
        if self.view_dependent:
            texts += [f"{prompt}, {v} view" for v in VIEWS]
        emb = encode_cached(prior, texts, cfg.cache)  # [N, L, D]
        self.text, self.null_text = emb[:1], emb[1:2]
        self.negative = emb[2:3] if negative_prompt else None
        self.views = emb[-len(VIEWS):] if self.view_dependent else None  # [4, L, D]

    def _follow_prior(self) -> None:
        """The embeddings were encoded on the device the prior had when the run was built;
        move them once the prior has moved (Lightning moves it to the GPU after __init__)."""
        device = self.prior.alphas_cumprod.device
        if self.text.device != device:
            move = lambda e: None if e is None else e.to(device)  # noqa: E731
            self.text, self.null_text = move(self.text), move(self.null_text)
            self.negative, self.views = move(self.negative), move(self.views)

    def conditioning(self, cameras: Cameras | None, step: int = 0, batch: int | None = None) -> Conditioning:
        """Conditions for B = len(cameras) views (or ``batch`` views with the null camera), on
        the prior's device."""
        self._follow_prior()
        B = len(cameras) if cameras is not None else batch
        prior = self.prior
        expand = lambda e: e.expand(B, -1, -1)  # noqa: E731
        text, perp_neg, pose = expand(self.text), (), None
        if cameras is not None:
            pose = cameras.c2w.reshape(B, 16).to(self.text.device)
            if self.view_dependent:
                idx = view_index(cameras, self.cfg, step).to(self.text.device)
                text = self.views[idx]
                if self.cfg.perp_neg:
                    w = value_at(self.cfg.perp_neg_weight, step)
                    front_w = torch.where((idx == 1) | (idx == 2), w, 0.0)  # side/back: away from front
                    back_w = torch.where(idx == 0, w, 0.0)  # front: away from back
                    perp_neg = ((expand(self.views[0:1]), front_w), (expand(self.views[2:3]), back_w))
        return Conditioning(text, expand(self.null_text), prior.camera_condition(cameras, B),
                            prior.camera_condition(cameras, B, null=True),
                            negative=None if self.negative is None else expand(self.negative),
                            pose=pose, perp_neg=perp_neg)


def image_prompt_for(prompt: str, vocabulary: list[str] | None) -> str:
    """A 4D prompt in an image prior's words: with a closed vocabulary, synonyms mapped
    (``world.SYNONYMS``: "ball" -> "sphere") and the words it lacks (the motion) dropped."""
    if vocabulary is None:
        return prompt
    words = [world.SYNONYMS.get(w, w) for w in prompt_words(prompt)]
    return " ".join(w for w in words if w in vocabulary)
