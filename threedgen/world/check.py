"""``threedgen check-prior``: does the embedded prior draw the prompted object from the asked view?

Samples every shape x colour prompt from several views with DDIM and reports, as JSON:
- the classifier's shape/colour accuracy on the samples, seen and held-out combinations apart;
- camera following: a sample's silhouette matches the true render's (both by
  ``sample_silhouette``) at its own elevation better than at +-30 degrees (every shape), at its
  own azimuth better than at +90/+180 (mug) and +45 (cube); "decidable" leaves out the ties,
  tests whose two true silhouettes are the same (a sphere's elevations, a mug seen from
  mirror-image azimuths);
- the classifier's own accuracy on fresh world renders.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from threedgen.cameras import make_cameras
from threedgen.world.metrics import iou
from threedgen.world.train import video_combinations, video_prompt
from threedgen.priors.cfg import Conditioning
from threedgen import world
from threedgen.world.classifier import (STILL, ClipClassifier, WorldClassifier, classifier_accuracy, clip_batch,
                                        clip_classifier_accuracy)
from threedgen.priors.diffusion import EMBEDDED_PATH, DiffusionPrior
from threedgen.priors.embedded.prior import Embedded, EmbeddedVideo
from threedgen.priors.sampling import ddim_sample


TIE_IOU = 0.98  # a camera test whose two true silhouettes overlap this much cannot be decided


def sample_silhouette(rgb: Tensor, threshold: float = 0.12) -> Tensor:
    """rgb [B, 3, H, W] -> float mask [B, 1, H, W] of the pixels that differ from the image's
    background colour (the median of its border pixels: samples' backgrounds may be tinted) by
    more than ``threshold`` in some channel."""
    border = torch.cat([rgb[..., 0, :], rgb[..., -1, :], rgb[..., 0], rgb[..., -1]], dim=-1)  # [B, 3, 4W]
    background = border.median(dim=-1).values[..., None, None]  # [B, 3, 1, 1]
    return ((rgb - background).abs().amax(1, keepdim=True) > threshold).float()


def _conditioning(prior: DiffusionPrior, prompts: list[str], cams) -> Conditioning:
    text = prior.encode_prompts(prompts)
    uncond = prior.encode_prompts([""]).expand_as(text)
    return Conditioning(text, uncond, prior.camera_condition(cams, len(prompts)),
                        prior.camera_condition(None, len(prompts)))


def world_mean_latent(prior: DiffusionPrior, n: int = 384, seed: int = 0) -> Tensor:
    """[1, C, h, w]: the mean encoded image of the training distribution (random shapes, colours
    and cameras in the training range), for ``ddim_sample``'s truncated start."""
    g = torch.Generator().manual_seed(seed)
    shapes = [world.SHAPES[i] for i in torch.randint(len(world.SHAPES), (n,), generator=g)]
    names = list(world.COLOURS)
    colours = [names[i] for i in torch.randint(len(names), (n,), generator=g)]
    cams = make_cameras(-10.0 + 70.0 * torch.rand(n, generator=g), 360.0 * torch.rand(n, generator=g),
                        2.6 + 0.4 * torch.rand(n, generator=g), 30.0, prior.resolution)
    return prior.encode_images(world.render(shapes, colours, cams).rgb).mean(0, keepdim=True)


def _phase(desc: str) -> tqdm:
    """A progress line naming a step with no steps inside, on stderr when it is a terminal."""
    return tqdm(total=1, desc=desc, bar_format="{desc} [{elapsed}]", disable=None, leave=False)


def _sample(prior, prompts, cams, scale, steps, g, t_start, mean, name, chunk=96) -> Tensor:
    """Samples of ``prompts`` from ``cams``, ``chunk`` at a time, each chunk with a progress bar
    (``name`` k/n)."""
    out, n = [], -(-len(prompts) // chunk)
    for k, i in enumerate(range(0, len(prompts), chunk)):
        sl = slice(i, i + chunk)
        out.append(ddim_sample(prior, _conditioning(prior, prompts[sl], cams[sl]), scale, steps, g,
                               t_start=t_start, mean_latent=mean, progress=f"{name} {k + 1}/{n}"))
    return torch.cat(out)


def save_grid(images: Tensor, columns: int, path: Path, scale: int = 2) -> None:
    """images [N, 3, H, W] in [0, 1] -> one PNG, ``columns`` per row."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(3, rows * h, columns * w)
    for k in range(n):
        r, c = divmod(k, columns)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[k]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).resize((columns * w * scale, rows * h * scale), Image.NEAREST).save(path)


@torch.no_grad()
def check_prior(path: Path = EMBEDDED_PATH, out_png: Path | None = Path("check-prior.png"),
                views: int = 4, guidance_scale: float = 7.5, steps: int = 50, seed: int = 0,
                t_start: int | None = 850) -> dict:
    """t_start: DDIM's truncated start from the world's mean image (``ddim_sample``); None samples
    from pure noise at the top of the schedule."""
    prior = Embedded.from_pretrained(path)
    with _phase("world mean image"):
        mean = world_mean_latent(prior) if t_start is not None else None
    classifier = WorldClassifier.from_pretrained(Path(path) / "classifier")
    g = torch.Generator().manual_seed(seed)
    held_out = {tuple(p) for p in world.HELD_OUT}

    # 1. Every prompt from `views` random views in the training camera range.
    combos = [(s, c) for s in world.SHAPES for c in world.COLOURS]
    prompts, keys = [], []
    for s, c in combos:
        prompts += [world.prompt_for(s, c)] * views
        keys += [(s, c)] * views
    n = len(prompts)
    el = 0.0 + 45.0 * torch.rand(n, generator=g)
    az = 360.0 * torch.rand(n, generator=g)
    cams = make_cameras(el, az, 2.8, 30.0, prior.resolution)
    samples = _sample(prior, prompts, cams, guidance_scale, steps, g, t_start, mean, "prompts")
    shapes, colours = classifier.predict(samples)
    with _phase("classifier on world renders"):
        result: dict = {"classifier_on_world": classifier_accuracy(classifier),
                        "sampler": {"steps": steps, "guidance_scale": guidance_scale, "t_start": t_start, "seed": seed}}
    for name, want in [("seen", False), ("held_out", True)]:
        idx = [i for i, k in enumerate(keys) if (k in held_out) == want]
        ok_s = [shapes[i] == keys[i][0] for i in idx]
        ok_c = [colours[i] == keys[i][1] for i in idx]
        result[name] = {"samples": len(idx), "shape": float(np.mean(ok_s)), "colour": float(np.mean(ok_c)),
                        "both": float(np.mean([a and b for a, b in zip(ok_s, ok_c)]))}
    if out_png is not None:
        save_grid(samples, views * 6, out_png)
        result["grid"] = str(out_png)

    # 2. Camera following, per shape, with a seen colour.
    tests = []  # (shape, elevation, azimuth, [alternative (el, az) that must match worse])
    for s in world.SHAPES:
        colour = next(c for c in world.COLOURS if (s, c) not in held_out)
        for e in (10.0, 35.0):
            for a in (0.0, 70.0, 140.0, 220.0, 290.0):
                alts = [(e - 30, a), (e + 30, a)]
                if s == "mug":
                    alts += [(e, a + 90), (e, a + 180)]
                if s == "cube":
                    alts += [(e, a + 45)]
                tests.append((s, colour, e, a, alts))
    cams = make_cameras([t[2] for t in tests], [t[3] for t in tests], 2.8, 30.0, prior.resolution)
    samples = _sample(prior, [world.prompt_for(t[0], t[1]) for t in tests], cams, guidance_scale, steps, g,
                      t_start, mean, "camera tests")
    masks = sample_silhouette(samples)
    counts = {"elevation": [0, 0], "mug_azimuth": [0, 0], "cube_azimuth": [0, 0]}
    by_shape = {s: [0, 0] for s in world.SHAPES}  # the elevation tests, per shape
    decidable = [0, 0]
    for k, (s, colour, e, a, alts) in enumerate(tqdm(tests, desc="camera tests: true silhouettes", disable=None,
                                                     leave=False, dynamic_ncols=True)):
        def truth(el, azi):  # the true render's silhouette, taken as the sample's is
            c = make_cameras(el, azi, 2.8, 30.0, prior.resolution)
            return sample_silhouette(world.render([s], [colour], c).rgb)
        own = truth(e, a)
        own_score = iou(masks[k:k + 1], own)
        for el2, az2 in alts:
            kind = "elevation" if el2 != e else f"{s}_azimuth"
            other = truth(el2, az2)
            hit = own_score > iou(masks[k:k + 1], other)
            counts[kind][0] += hit
            counts[kind][1] += 1
            if kind == "elevation":
                by_shape[s][0] += hit
                by_shape[s][1] += 1
            if iou(own, other) < TIE_IOU:
                decidable[0] += hit
                decidable[1] += 1
    result["camera"] = {k: round(v[0] / v[1], 4) for k, v in counts.items()}
    total = [sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())]
    result["camera"]["all"] = round(total[0] / total[1], 4)
    # A sphere's silhouette is the same from every elevation: its elevation tests are ties, which
    # "all" counts as misses and "decidable" leaves out.
    result["camera"]["decidable"] = round(decidable[0] / decidable[1], 4)
    result["camera"]["ties"] = total[1] - decidable[1]
    result["camera"]["elevation_by_shape"] = {s: round(v[0] / v[1], 4) for s, v in by_shape.items()}
    return result


# --- the video prior (``threedgen check-prior --video``) -------------------------------------------
def world_clips(prior: DiffusionPrior, n: int, g: torch.Generator, random_phase: bool = True,
                motion: str | None = None):
    """n random world clips (``clip_batch``; motion: of that motion only) in random colours,
    encoded -> (x0 [n, C, T, h, w], shape ids [n], motion ids [n] (0 = still), colour names,
    the clips' cameras)."""

    frames = prior.world["frames"]
    r, shapes, motions, cams = clip_batch(n, g, frames, random_phase=random_phase, motion=motion,
                                          azimuth=training_azimuth(prior))
    names = list(world.COLOURS)
    colours = [names[i] for i in torch.randint(len(names), (n,), generator=g)]
    rgb = world.colourize(r.luminance, r.alpha, world.colour_tensor(colours).repeat_interleave(frames, 0))
    return prior.encode_images(rgb.unflatten(0, (n, frames)).transpose(1, 2)), shapes, motions, colours, cams


def training_azimuth(prior: DiffusionPrior) -> tuple[float, float]:
    """The azimuth range (degrees) of the video prior's training cameras, from its world.json
    (every azimuth for a prior without one, or trained before the range was recorded)."""
    return tuple((prior.world or {}).get("camera", {}).get("azimuth", (0.0, 360.0)))


def trained_random_phase(prior: DiffusionPrior) -> bool:
    """Whether the video prior was trained on clips from random phases (or all from phase 0)."""
    return prior.world.get("training", {}).get("random_phase", True)


def clip_mean_latent(prior: DiffusionPrior, n: int = 96, seed: int = 0) -> Tensor:
    """[1, C, T, h, w]: the mean encoded training clip (phases as the prior was trained), for
    ``ddim_sample``'s truncated start."""
    x0, *_ = world_clips(prior, n, torch.Generator().manual_seed(seed), trained_random_phase(prior))
    return x0.mean(0, keepdim=True)


@torch.no_grad()
def motion_prompt_gain(prior: DiffusionPrior, n: int = 48, timesteps=(600, 850, 950), seed: int = 1,
                       motion: str | None = None) -> dict:
    """{t: 1 - e_true / e_still}: how much the motion word improves the prior's estimate of x0
    from x_t, on n noised world clips that move (phases as the prior was trained; motion: of
    that motion only), where e is the mean squared x0 error with the prompt naming the clip's
    motion (e_true) or none (e_still), both with the clip's camera if the prior takes one. 0: the
    prior ignores the motion words; the word matters where x_t no longer shows the motion, at
    high noise."""

    g = torch.Generator().manual_seed(seed)
    x0, shapes, motions, colours, cams = world_clips(prior, n, g, trained_random_phase(prior), motion)
    keep = (motions > 0).nonzero().squeeze(-1).tolist()
    x0, camera = x0[keep], prior.camera_condition(cams[keep], len(keep))
    clips = [(colours[k], world.SHAPES[shapes[k]], world.MOTIONS[motions[k] - 1]) for k in keep]
    true, still = (prior.encode_prompts([video_prompt(c, s, m if word else None, random.Random(0))
                                         for c, s, m in clips]) for word in (True, False))
    return _gain(prior, x0, timesteps, g, (true, camera), (still, camera))


def _gain(prior: DiffusionPrior, x0: Tensor, timesteps, g: torch.Generator, with_it: tuple, without: tuple) -> dict:
    """{t: 1 - e(with_it) / e(without)}, e the mean squared x0 error of the prior's estimate from
    x0 [n, C, T, h, w] noised to t, given (text [n, L, D], camera [n, Dc] | None) conditions."""
    gain = {}
    for t in timesteps:
        a = prior.alphas_cumprod[t]
        noise = torch.randn(x0.shape, generator=g)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        tt = torch.full((len(x0),), t)
        err = [((prior.predict_noise(x_t, tt, text, camera) - noise).square().mean() * (1 - a) / a).item()
               for text, camera in (with_it, without)]  # eps error -> x0 error
        gain[t] = round(1 - err[0] / err[1], 4)
    return gain


@torch.no_grad()
def camera_gain(prior: DiffusionPrior, n: int = 32, timesteps=(600, 850, 950), seed: int = 1,
                motion: str | None = None) -> dict:
    """{t: 1 - e_camera / e_null}: how much the clip's camera improves the prior's estimate of
    x0 from x_t on n noised world clips (motion: of that motion only, "still" included), the
    prompt naming each clip's shape, colour and motion; e is the mean squared x0 error with the
    clip's camera or with the null camera. 0 for a camera-blind prior."""

    g = torch.Generator().manual_seed(seed)
    x0, shapes, motions, colours, cams = world_clips(prior, n, g, trained_random_phase(prior), motion)
    names = (None, *world.MOTIONS)
    text = prior.encode_prompts([video_prompt(c, world.SHAPES[s], names[m], random.Random(0))
                                 for c, s, m in zip(colours, shapes.tolist(), motions.tolist())])
    return _gain(prior, x0, timesteps, g, (text, prior.camera_condition(cams, n)),
                 (text, prior.camera_condition(None, n)))


@torch.no_grad()
def check_video_prior(path: Path, out_png: Path | None = Path("check-video-prior.png"), samples: int = 4,
                      guidance_scale: float = 7.5, steps: int = 50, seed: int = 0,
                      t_start: int | None = 850) -> dict:
    """Samples ``samples`` clips of every (shape, motion) the video prior learnt, each in a seen
    colour drawn at random and from a random camera in the training range, and reports the clip
    classifier's shape, colour and motion accuracy (and all three at once), plus the classifier's
    own accuracy on fresh world clips."""

    prior = EmbeddedVideo.from_pretrained(path)
    classifier = ClipClassifier.from_pretrained(Path(path) / "classifier")
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    keys, prompts = [], []
    for shape, motion in video_combinations():
        seen = [c for c in world.COLOURS if (shape, c) not in world.HELD_OUT]
        for _ in range(samples):
            colour = seen[rng.integers(len(seen))]
            keys.append((shape, colour, motion or STILL))
            prompts.append(video_prompt(colour, shape, motion, random.Random(len(prompts))))
    mean = clip_mean_latent(prior) if t_start is not None else None
    n, (lo, hi), (az_lo, az_hi) = len(prompts), prior.world["camera"]["elevation"], training_azimuth(prior)
    # drawn from rng, not g, so that a camera-blind prior's samples are those it drew before
    cams = make_cameras(lo + (hi - lo) * rng.random(n), az_lo + (az_hi - az_lo) * rng.random(n), 2.8, 30.0,
                        prior.resolution)
    clips = []
    for i in range(0, n, 32):
        cond = _conditioning(prior, prompts[i:i + 32], cams[i:i + 32])
        clips.append(ddim_sample(prior, cond, guidance_scale, steps, g, t_start=t_start, mean_latent=mean,
                                 progress=f"clips {i // 32 + 1}/{-(-n // 32)}"))
    clips = torch.cat(clips)  # [N, 3, T, R, R]
    shapes, colours, motions = classifier.predict(clips)
    ok = np.array([[s == k[0], c == k[1], m == k[2]] for s, c, m, k in zip(shapes, colours, motions, keys)])
    result = {"classifier_on_world": clip_classifier_accuracy(classifier), "samples": len(keys),
              "sampler": {"steps": steps, "guidance_scale": guidance_scale, "t_start": t_start, "seed": seed},
              "shape": float(ok[:, 0].mean()), "colour": float(ok[:, 1].mean()), "motion": float(ok[:, 2].mean()),
              "all": float(ok.all(1).mean()),
              "motion_by_label": {m: float(ok[[k[2] == m for k in keys], 2].mean())
                                  for m in (STILL, *world.MOTIONS)},
              "motion_prompt_gain": motion_prompt_gain(prior),
              "motion_prompt_gain_by_motion": {m: motion_prompt_gain(prior, n=16, motion=m)
                                               for m in world.MOTIONS},
              "camera_gain": camera_gain(prior) if prior.has_camera else None}
    if out_png is not None:  # one clip per row, its frames side by side
        per_row = clips[::samples].transpose(1, 2)  # [rows, T, 3, R, R]
        save_grid(per_row.flatten(0, 1), per_row.shape[1], out_png)
        result["grid"] = str(out_png)
    return result
