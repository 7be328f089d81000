"""The embedded world's CLIP: a small contrastive image-text model trained on world renders, so that
the CLIP metrics (``threedgen.priors.clip``) run offline and in CI through the same
``CLIPModel.from_pretrained`` code as a real CLIP.

Model: a transformers ``CLIPModel``: a ViT vision tower on 32x32 images (8x8 patches, 3 layers of
width 64), a 1-layer text transformer of width 32 over the world's words (``a an the``, the
colours, the shapes), both projected to 32 dimensions. Saved in CLIPModel's folder layout
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json, preprocessor_config.json)
beside the world classifier (``weights/clip``).

Training (``train_world_clip``; ``threedgen train-prior --part clip``): the classifier's data
(``classifier.world_batch``: every shape from every azimuth, re-coloured on the fly and augmented
by ``classifier.recoloured_batch``). The loss is InfoNCE of each image against all 36 shape x
colour prompts: the image-to-text half of CLIP's loss with every caption of the world as the
candidates, so that no batch holds a false negative (two images of the same prompt). Each step
draws each prompt's article at random, so that "a", "an" and "the" read alike.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from threedgen import world
from threedgen.priors.clip import Clip, load_clip, retrieval
from threedgen.priors.embedded import model as M
from threedgen.world.classifier import augmentation, fit_heads, recoloured_batch, world_batch

log = logging.getLogger("threedgen.train_prior")

# The CLIP's token ids: its end token must not be id 2, which CLIPTextModel takes for a legacy
# config and then pools at the largest token id instead of at the end token.
SPECIALS = ("<pad>", "<bos>", "<unk>", "<eos>")
IMAGE_SIZE = 32
# transformers' CLIP image processor settings: 32x32 RGB mapped from [0, 255] to [-1, 1].
PREPROCESSOR = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
                "resample": 3, "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}


def world_prompts() -> list[str]:
    """The world's 36 shape x colour captions, prompt k = (shape k // 6, colour k % 6), each with
    its English article ("an orange cube")."""
    return [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for s in world.SHAPES for c in world.COLOURS]


def build_world_clip() -> tuple[CLIPModel, object]:
    """An untrained world CLIP (module doc) and its word-level tokenizer."""
    tokenizer = M.build_tokenizer([*M.ARTICLES, *world.COLOURS, *world.SHAPES], SPECIALS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=M.MAX_TOKENS, pad_token_id=ids["<pad>"],
                          bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"])
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=3, num_attention_heads=4)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    return CLIPModel(config), tokenizer


def save_world_clip(out: Path, model: CLIPModel, tokenizer) -> None:
    """The CLIPModel folder layout that ``priors.clip.load_clip`` (and ``CLIPModel.from_pretrained``) reads."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")


class _PromptLogits(nn.Module):
    """``classifier.fit_heads``' view of a CLIP in training: images [B, 3, 32, 32] in [0, 1] ->
    (logits [B, 36] over the world prompts, each with a random article,); saved as a CLIP folder."""

    def __init__(self, model: CLIPModel, tokenizer, g: torch.Generator):
        super().__init__()
        self.model, self.tokenizer, self.g = model, tokenizer, g
        self.register_buffer("mean", torch.tensor(PREPROCESSOR["image_mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(PREPROCESSOR["image_std"]).view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> tuple[Tensor]:
        articles = torch.randint(len(M.ARTICLES), (len(world.SHAPES) * len(world.COLOURS),), generator=self.g)
        words = [p.split(" ", 1)[1] for p in world_prompts()]
        texts = [f"{M.ARTICLES[a]} {w}" for a, w in zip(articles.tolist(), words)]
        tokens = self.tokenizer(texts, padding="max_length", max_length=M.MAX_TOKENS, return_tensors="pt")
        out = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                         pixel_values=(rgb - self.mean) / self.std)
        return (out.logits_per_image,)

    def save_pretrained(self, out: Path) -> None:
        save_world_clip(out, self.model, self.tokenizer)


def train_world_clip(out: Path, steps: int = 600, n_renders: int = 2400, seed: int = 0) -> Clip:
    """Train the world CLIP (module doc) on ``n_renders`` renders for ``steps`` steps of 128
    images; save it to ``out`` and return it loaded from there, as evaluation loads it."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    data, shapes, _ = world_batch(n_renders, g)
    log.info("clip: rendered %d views in %.0f s", n_renders, time.time() - t0)
    augment = augmentation()
    n_colours = len(world.COLOURS)

    def batch():
        rgb, shape_ids, colour_ids = recoloured_batch(data, shapes, 128, g, augment)
        return rgb, (shape_ids * n_colours + colour_ids,)

    model, tokenizer = build_world_clip()
    fit_heads(_PromptLogits(model, tokenizer, g), steps, batch, out, "clip")
    return load_clip(str(out))


@torch.no_grad()
def world_clip_figures(clip: Clip, n: int = 360, seed: int = 1234) -> dict:
    """R-precision over the 36 world prompts on ``n`` fresh world renders (a seed the training
    never used; random shape, colour and camera): "r_precision" with each render's own prompt,
    "mismatched_r_precision" with the prompt of another random combination taken as the true one
    (an image-blind model scores chance, 1/36, on both); and the mean CLIP score of each."""
    g = torch.Generator().manual_seed(seed)
    r, shapes, colours = world_batch(n, g)
    n_prompts = len(world.SHAPES) * len(world.COLOURS)
    truth = shapes * len(world.COLOURS) + colours  # [n]
    wrong = (truth + torch.randint(1, n_prompts, (n,), generator=g)) % n_prompts  # [n], never the truth
    image_emb, text_emb = clip.embed(r.rgb, world_prompts())
    r_true, rank_true = retrieval(image_emb, text_emb, truth)
    r_wrong, rank_wrong = retrieval(image_emb, text_emb, wrong)
    return {"n": n, "prompts": n_prompts, "chance": 1 / n_prompts,
            "r_precision": r_true, "mean_rank": rank_true,
            "mismatched_r_precision": r_wrong, "mismatched_mean_rank": rank_wrong,
            "clip_score": (image_emb * text_emb[truth]).sum(-1).mean().item(),
            "mismatched_clip_score": (image_emb * text_emb[wrong]).sum(-1).mean().item()}
