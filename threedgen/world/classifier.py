"""The world classifier: predicts (shape, colour) from a 32x32 RGB image on white.

It stands in for CLIP R-precision: trained on world renders from the prior's camera range, with
blur, noise, shifts and brightness jitter so that it also reads imperfect optimised renders.
Saved beside the prior (``classifier/``) with diffusers' ModelMixin so it loads the same way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn
from tqdm import tqdm

from threedgen import world
from threedgen.priors.diffusion import EMBEDDED_PATH
from threedgen.world.train import (TrainConfig, clip_times, random_cameras, render_clips,
                                             video_combinations)

log = logging.getLogger("threedgen.train_prior")


class WorldClassifier(ModelMixin, ConfigMixin):
    """images [B, 3, 32, 32] in [0, 1] -> (shape logits [B, n_shapes], colour logits [B, n_colours])."""

    @register_to_config
    def __init__(self, shapes: tuple[str, ...] = world.SHAPES,
                 colours: tuple[str, ...] = tuple(world.COLOURS), width: int = 32):
        super().__init__()
        w = width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())

        self.features = nn.Sequential(block(3, w), nn.AvgPool2d(2), block(w, 2 * w), nn.AvgPool2d(2),
                                      block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(4 * w, len(shapes))
        self.colour_head = nn.Linear(4 * w, len(colours))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        h = self.features(images * 2 - 1)
        return self.shape_head(h), self.colour_head(h)

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[list[str], list[str]]:
        """images [B, 3, H, W] -> (shape names, colour names), one each per image."""
        s, c = self(images)
        return ([self.config.shapes[i] for i in s.argmax(-1).tolist()],
                [self.config.colours[i] for i in c.argmax(-1).tolist()])


def load_world_classifier() -> WorldClassifier:
    """The shipped classifier of the embedded world (``weights/classifier/``)."""
    return WorldClassifier.from_pretrained(EMBEDDED_PATH / "classifier")


def world_batch(n: int, g: torch.Generator, elevation=(-10.0, 70.0), distance=(2.6, 3.0)):
    """n random world renders of every shape x colour (held-out ones too), from every azimuth ->
    (rgb, shape, colour)."""
    shapes = torch.randint(len(world.SHAPES), (n,), generator=g)
    colours = torch.randint(len(world.COLOURS), (n,), generator=g)
    cams = random_cameras(n, TrainConfig(elevation=elevation, azimuth=(0.0, 360.0), distance=distance), g)
    names = list(world.COLOURS)
    r = world.render([world.SHAPES[i] for i in shapes.tolist()], [names[i] for i in colours.tolist()], cams)
    return r, shapes, colours


def train_classifier(out: Path, steps: int = 1500, n_renders: int = 6000, seed: int = 0) -> WorldClassifier:
    """Train on renders re-coloured on the fly and augmented; save to ``out``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    data, shapes, _ = world_batch(n_renders, g)
    log.info("classifier: rendered %d views in %.0f s", n_renders, time.time() - t0)
    augment = augmentation()

    def batch():
        rgb, shape_ids, colour_ids = recoloured_batch(data, shapes, 128, g, augment)
        return rgb, (shape_ids, colour_ids)

    return fit_heads(WorldClassifier(), steps, batch, out, "classifier")


def augmentation() -> nn.Module:
    """The training augmentation of the world's image models (the classifier, the CLIP): small
    turns, shifts and scalings, blur, brightness and saturation jitter, noise, so that they
    also read imperfect optimised renders. Draws from torch's global generator."""
    return nn.Sequential(
        K.RandomAffine(degrees=5, translate=(0.08, 0.08), scale=(0.85, 1.15), padding_mode="border", p=0.8),
        K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=0.5),
        K.ColorJitter(brightness=0.1, saturation=0.15, p=0.5),
        K.RandomGaussianNoise(std=0.03, p=0.5),
    )


def recoloured_batch(data: world.WorldRender, shapes: Tensor, n: int, g: torch.Generator,
                     augment: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """n of ``world_batch``'s renders ``data`` (shape ids ``shapes`` [N]), drawn at random, each
    re-coloured with a random world colour and augmented -> (rgb [n, 3, H, W] in [0, 1],
    shape ids [n], colour ids [n])."""
    idx = torch.randint(len(shapes), (n,), generator=g)
    colours = torch.randint(len(world.COLOURS), (n,), generator=g)
    palette = world.colour_tensor(list(world.COLOURS))
    rgb = world.colourize(data.luminance[idx], data.alpha[idx], palette[colours])
    return augment(rgb).clamp(0, 1), shapes[idx], colours


def fit_heads(model, steps: int, batch, out: Path, name: str):
    """AdamW + one-cycle on the summed cross-entropy of the model's heads; ``batch()`` gives
    (inputs, one label tensor per head). Saves the trained model to ``out``."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for step in tqdm(range(1, steps + 1), desc=f"train-{name}", mininterval=5):
        inputs, labels = batch()
        loss = sum(F.cross_entropy(logits, y) for logits, y in zip(model(inputs), labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log.info("%s step %d loss %.4f", name, step, loss.item())
    model.eval()
    model.save_pretrained(out)
    return model


@torch.no_grad()
def classifier_accuracy(model: WorldClassifier, n: int = 600, seed: int = 1234) -> dict[str, float]:
    """Accuracy on fresh world renders (a seed the training never used)."""
    g = torch.Generator().manual_seed(seed)
    r, shapes, colours = world_batch(n, g)
    s, c = model(r.rgb)
    return {"shape": (s.argmax(-1) == shapes).float().mean().item(),
            "colour": (c.argmax(-1) == colours).float().mean().item(), "n": n}


# --- clips: shape, colour and motion -------------------------------------------------------------
STILL = "still"  # the motion label of a clip without motion


class ClipClassifier(ModelMixin, ConfigMixin):
    """clips [B, 3, T, 32, 32] in [0, 1] -> (shape [B, n_shapes], colour [B, n_colours],
    motion [B, 1 + n_motions] logits; motion 0 is STILL). 3D convolutions over (t, y, x), so
    motion is read from how the frames change; pooled over time, so any phase reads the same."""

    @register_to_config
    def __init__(self, shapes: tuple[str, ...] = world.SHAPES, colours: tuple[str, ...] = tuple(world.COLOURS),
                 motions: tuple[str, ...] = (STILL, *world.MOTIONS), width: int = 16):
        super().__init__()
        w = width

        def block(i, o):
            return nn.Sequential(nn.Conv3d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                                 nn.Conv3d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())

        pool = nn.AvgPool3d((1, 2, 2))
        stem = nn.Sequential(nn.Conv3d(3, w, (1, 3, 3), padding=(0, 1, 1)), nn.GroupNorm(8, w), nn.SiLU())
        self.features = nn.Sequential(stem, pool, block(w, 2 * w), pool, block(2 * w, 4 * w), pool,
                                      block(4 * w, 4 * w), nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(4 * w, len(n)) for n in (shapes, colours, motions))

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if clips.shape[-2:] != (32, 32):
            B, C, T = clips.shape[:3]
            frames = F.interpolate(clips.transpose(1, 2).flatten(0, 1), size=(32, 32), mode="bilinear",
                                   antialias=True, align_corners=False)
            clips = frames.unflatten(0, (B, T)).transpose(1, 2)
        h = self.features(clips * 2 - 1)
        return tuple(head(h) for head in self.heads)

    @torch.no_grad()
    def predict(self, clips: Tensor) -> tuple[list[str], list[str], list[str]]:
        """clips [B, 3, T, H, W] -> (shape, colour, motion names), one each per clip."""
        c = self.config
        return tuple([names[i] for i in logits.argmax(-1).tolist()]
                     for names, logits in zip((c.shapes, c.colours, c.motions), self(clips)))


def clip_batch(n: int, g: torch.Generator, frames: int = 8, elevation=(-10.0, 60.0), distance=(2.6, 3.0),
               random_phase: bool = True, motion: str | None = None, azimuth=(0.0, 360.0)):
    """n random clips of every (shape, motion) the video prior learns, in red ->
    (world.WorldRender of n * frames frames, shape ids [n], motion ids [n] (0 = still), the n
    clips' cameras);
    random_phase: see ``train.clip_times``; motion: only clips of this motion ("still" included)."""
    combos = [c for c in video_combinations() if motion is None or (c[1] or STILL) == motion]
    if not combos:
        raise ValueError(f"no clips of motion {motion!r}; motions: {STILL}, {', '.join(world.MOTIONS)}")
    pick = torch.randint(len(combos), (n,), generator=g).tolist()
    cams = random_cameras(n, TrainConfig(elevation=elevation, azimuth=azimuth, distance=distance), g)
    r = render_clips([combos[k] for k in pick], cams, clip_times(n, frames, g, random_phase))
    motions = (STILL, *world.MOTIONS)
    shape_ids = torch.tensor([world.SHAPES.index(combos[k][0]) for k in pick])
    motion_ids = torch.tensor([motions.index(combos[k][1] or STILL) for k in pick])
    return r, shape_ids, motion_ids, cams


def _as_clips(x: Tensor, frames: int) -> Tensor:
    """[N * T, C, H, W] frames, clip-major -> [N, C, T, H, W]."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


def train_clip_classifier(out: Path, steps: int = 1200, n_clips: int = 1500, frames: int = 8,
                          seed: int = 0) -> ClipClassifier:
    """Train on clips re-coloured on the fly and augmented (the same random transform on every
    frame of a clip); save to ``out``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    data, shapes, motions, _ = clip_batch(n_clips, g, frames)
    log.info("clip classifier: rendered %d clips in %.0f s", n_clips, time.time() - t0)
    lum, alpha = _as_clips(data.luminance, frames), _as_clips(data.alpha, frames)
    palette = world.colour_tensor(list(world.COLOURS))
    augment = K.VideoSequential(
        K.RandomAffine(degrees=5, translate=(0.08, 0.08), scale=(0.85, 1.15), padding_mode="border", p=0.8),
        K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=0.5),
        K.ColorJitter(brightness=0.1, saturation=0.15, p=0.5),
        data_format="BCTHW", same_on_frame=True)
    def batch():
        idx = torch.randint(n_clips, (32,), generator=g)
        colours = torch.randint(len(world.COLOURS), (32,), generator=g)
        rgb = palette[colours][:, :, None, None, None] * lum[idx] + world.BACKGROUND * (1 - alpha[idx])
        rgb = augment(rgb.clamp(0, 1))
        noise = 0.03 * torch.randn(rgb.shape, generator=g)
        noisy = torch.rand(32, 1, 1, 1, 1, generator=g) < 0.5  # on half the clips
        rgb = (rgb + noise * noisy).clamp(0, 1)
        return rgb, (shapes[idx], colours, motions[idx])

    return fit_heads(ClipClassifier(), steps, batch, out, "clip-classifier")


@torch.no_grad()
def clip_classifier_accuracy(model: ClipClassifier, n: int = 300, seed: int = 1234) -> dict[str, float]:
    """Accuracy on fresh clips (a seed the training never used), every colour."""
    g = torch.Generator().manual_seed(seed)
    r, shapes, motions, _ = clip_batch(n, g)
    colours = torch.randint(len(world.COLOURS), (n,), generator=g)
    palette = world.colour_tensor(list(world.COLOURS))
    frames = r.rgb.shape[0] // n
    lum, alpha = _as_clips(r.luminance, frames), _as_clips(r.alpha, frames)
    rgb = palette[colours][:, :, None, None, None] * lum + world.BACKGROUND * (1 - alpha)
    s, c, m = model(rgb)
    return {"shape": (s.argmax(-1) == shapes).float().mean().item(),
            "colour": (c.argmax(-1) == colours).float().mean().item(),
            "motion": (m.argmax(-1) == motions).float().mean().item(), "n": n}
