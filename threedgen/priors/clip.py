"""CLIP image-text models for evaluation: CLIP score and CLIP R-precision of rendered views.

A model is a folder in transformers' CLIPModel layout (``config.json``, ``model.safetensors``, the
tokenizer's files, ``preprocessor_config.json``) or a hub id ("openai/clip-vit-base-patch32"),
found like a prior's checkpoint (``diffusion.resolve_checkpoint``: offline, a hub id that is not in
the local cache fails at once with one line) and loaded with ``CLIPModel.from_pretrained``,
``AutoTokenizer`` and ``AutoImageProcessor``. "embedded" names the embedded world's CLIP, shipped
beside the world classifier (``embedded/weights/clip``, ``threedgen train-prior --part clip``).

- CLIP score: the mean over views of the cosine similarity between a view's image embedding and
  the prompt's text embedding (in [-1, 1]; papers often print it times 100).
- CLIP R-precision (Park et al. 2021, as Dream Fields and DreamFusion report it): the fraction of
  views whose most similar text, among the prompt and a pool of distractor prompts, is the prompt.
  A pool prompt that is the same caption as the prompt (the same words, articles aside) is not
  a distractor. Ties count against the prompt.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from threedgen.priors.base import PriorLoadError, prompt_words
from threedgen.priors.diffusion import EMBEDDED_PATH, resolve_checkpoint
from threedgen.schedules import ConfigError

EMBEDDED_CLIP_PATH = EMBEDDED_PATH / "clip"
PROMPT_POOL = Path(__file__).with_name("clip_prompts.txt")  # the shipped distractor pool
# What a hub download of a CLIP fetches: the model (safetensors), its tokenizer and image processor.
CLIP_PATTERNS = ["config.json", "model.safetensors", "tokenizer*", "vocab.json", "merges.txt",
                 "special_tokens_map.json", "preprocessor_config.json"]
ARTICLES = ("a", "an", "the")


@dataclass
class Clip:
    """A CLIP model in eval mode with its tokenizer and image processor; ``name`` as configured."""

    name: str
    model: CLIPModel
    tokenizer: object
    processor: object

    @property
    def image_size(self) -> int:
        """The side of the square images the vision tower reads (the processor's crop)."""
        return int(self.processor.crop_size["height"])

    def unreadable(self, prompt: str) -> str | None:
        """Why the text tower cannot read ``prompt`` whole (words its closed vocabulary maps to the
        unknown token, or more tokens than it reads), or None."""
        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False).input_ids
        if tok.unk_token_id is not None and tok.unk_token_id != tok.eos_token_id and tok.unk_token_id in ids:
            unknown = [w for w in prompt_words(prompt)
                       if tok.unk_token_id in tok(w, add_special_tokens=False).input_ids]
            return (f"the CLIP model {self.name!r} does not know the word(s) {', '.join(map(repr, unknown))} "
                    f"of the prompt {prompt!r}")
        n = len(tok(prompt).input_ids)
        if n > tok.model_max_length:
            return f"the prompt has {n} tokens; the CLIP model {self.name!r} reads at most {tok.model_max_length}"
        return None

    @torch.no_grad()
    def embed(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """images [V, 3, H, W] in [0, 1] (H = W = ``image_size``, else the processor resizes),
        prompts (P strings) -> (image embeddings [V, D], text embeddings [P, D]), unit length."""
        pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        inputs = self.processor(images=list(pixels.numpy()), return_tensors="pt")
        text = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        out = self.model(input_ids=text.input_ids, attention_mask=text.attention_mask,
                         pixel_values=inputs.pixel_values)
        return out.image_embeds, out.text_embeds

    def metrics(self, images: Tensor, prompt: str, pool: list[str]) -> dict:
        """CLIP score and R-precision (module doc) of views ``images`` [V, 3, H, W] for ``prompt``
        against the distractors of ``pool``; "clip_rank" is the prompt's mean rank (1 = best)."""
        texts = retrieval_texts(prompt, pool)
        image_emb, text_emb = self.embed(images, texts)
        r_precision, rank = retrieval(image_emb, text_emb)
        return {"clip_score": clip_score(image_emb, text_emb[0]), "clip_r_precision": r_precision,
                "clip_rank": rank, "clip_pool": len(texts)}


def clip_score(image_emb: Tensor, text_emb: Tensor) -> float:
    """Mean cosine similarity of unit image embeddings [V, D] with a unit text embedding [D]."""
    return (image_emb @ text_emb).mean().item()


def retrieval(image_emb: Tensor, text_emb: Tensor, true: int | Tensor = 0) -> tuple[float, float]:
    """Unit image embeddings [V, D] against unit text embeddings [P, D] of which ``true`` (an
    index, or one per view [V]) is the prompt -> (R-precision: the fraction of views whose most
    similar text is the prompt, the prompt's mean rank, 1 = best). A distractor as similar as the
    prompt ranks above it."""
    sims = image_emb @ text_emb.T  # [V, P]
    true = torch.as_tensor(true).expand(len(sims))
    rank = (sims >= sims.gather(1, true[:, None])).sum(1)  # [V]: the prompt itself and every text at least as close
    return (rank == 1).float().mean().item(), rank.float().mean().item()


def caption_key(prompt: str) -> tuple[str, ...]:
    """What makes two prompts the same caption: their words, lower-cased, articles dropped."""
    return tuple(w for w in prompt_words(prompt) if w not in ARTICLES)


def retrieval_texts(prompt: str, pool: list[str]) -> list[str]:
    """The prompt first, then each distractor of ``pool`` once, leaving out the prompt's own caption."""
    seen = {caption_key(prompt)}
    texts = [prompt]
    for p in pool:
        if caption_key(p) not in seen:
            seen.add(caption_key(p))
            texts.append(p)
    if len(texts) == 1:
        raise ConfigError("eval.prompt_pool: the pool holds no prompt other than the run's own, so there is "
                          "nothing to rank it against")
    return texts


def read_prompt_pool(path: str | Path) -> list[str]:
    """Prompts from a text file, one a line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"eval.prompt_pool: cannot read {path} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"eval.prompt_pool: {path} is not a UTF-8 text file of prompts, one a line") from None
    prompts = [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    if not prompts:
        raise ConfigError(f"eval.prompt_pool: {path} holds no prompts (one a line)")
    return prompts


@functools.lru_cache(maxsize=4)
def load_clip(name: str) -> Clip:
    """The CLIP ``name`` names: "embedded", a local folder or a hub id (module doc). Loaded once
    per process; a missing, incomplete or foreign folder raises a one-line PriorLoadError."""
    embedded = name == "embedded"
    folder = (EMBEDDED_CLIP_PATH if embedded else
              resolve_checkpoint(name, CLIP_PATTERNS, "CLIP model", "eval.clip_model"))
    hint = "; run `threedgen train-prior --part clip` or reinstall the package" if embedded else ""
    for f in ("config.json", "model.safetensors", "preprocessor_config.json"):
        if not (folder / f).is_file():
            raise PriorLoadError(f"CLIP model {name}: missing {f} in {folder} (a folder in transformers' "
                                 f"CLIPModel layout){hint}")
    try:
        model = CLIPModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    except Exception as e:  # a foreign config, a damaged safetensors file, a missing tokenizer
        first = str(e).splitlines()[0] if str(e) else ""
        raise PriorLoadError(f"CLIP model {name}: cannot load {folder} ({type(e).__name__}: {first})") from e
    return Clip(name, model.requires_grad_(False), tokenizer, processor)
