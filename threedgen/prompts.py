"""Prompt processing: text embeddings for a run's prompt, cached, expanded per view."""

from __future__ import annotations

from threedgen.cameras import Cameras
from threedgen.guidance.base import Conditioning


class PromptProcessor:
    """Encodes the prompt and the negative prompt once; ``conditioning(cameras)`` expands them
    to a batch. The prompt is checked against the prior's vocabulary up front."""

    def __init__(self, prior, prompt: str, negative_prompt: str = ""):
        self.prior = prior
        emb = prior.encode_prompts([prompt, negative_prompt])  # [2, L, D]
        self.text, self.uncond = emb[:1], emb[1:]

    def conditioning(self, cameras: Cameras | None, batch: int | None = None) -> Conditioning:
        """Conditions for B = len(cameras) views (or ``batch`` views with the null camera)."""
        B = len(cameras) if cameras is not None else batch
        return Conditioning(self.text.expand(B, -1, -1), self.uncond.expand(B, -1, -1),
                            self.prior.camera_condition(cameras, B), self.prior.camera_condition(None, B))
