"""``threedgen bench``: one table of timings measured in one run on this machine.

Rows: the prior's classifier-free-guided evaluation (the floor of a step); every representation's
renderer at the default recipe's sizes, at the prior's resolution, 64^2 and 128^2, as a ratio to
that floor; the Gaussian rasterizer (tiled, numba kernels) against the dense all-pixels reference;
one full SDS step per representation, and one full step of every guidance method on Gaussians
(with its recipe's settings), one step of the amortized generator (configs/amortized-asd.yaml), split into render, guidance (prior calls and the method's own
work) and backward+optimiser, with the prior evaluations each step makes; one 4D video step
(T frames rendered, the video prior's evaluation, backward). All forward+backward,
medians of a few repeats, seconds.
Absolute times only mean something on the machine they were measured on; compare ratios.
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch

from threedgen.benchmarks.gaussians import bench_rasterizer
from threedgen.amortized import Corpus, read_corpus, render_corpus
from threedgen.cameras import CameraRanges, orbit, sample_cameras
from threedgen.config import load as load_config, recipes
from threedgen.registry import GUIDANCE
from threedgen.config import PromptConfig
from threedgen.priors.diffusion import EMBEDDED_PATH, EMBEDDED_VIDEO_PATH
from threedgen.prompts import PromptProcessor
from threedgen.registry import REPRESENTATIONS, build_guidance, build_representation, prior_from_pretrained
from threedgen.representations.generator import GeneratedTriplanes


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


RECIPES = recipes()  # the shipped recipes by name
DENSE_MAX_PAIRS = 4 * 5000 * 128 * 128


def recipe_representation(name: str):
    """The representation config of ``configs/<name>-sds.yaml`` (the default recipe's sizes), or
    the class defaults where there is no such recipe (dynamic_gaussians)."""
    path = RECIPES.get(f"{name}-sds")
    if path is None:
        return REPRESENTATIONS[name].Config()
    return load_config([path], ["prompt=a red cube"]).system.representation


def bench_render(name: str, size: int, repeats: int, n_views: int = 4) -> float:
    """Forward+backward of one representation's renderer (training mode) at size^2, with the
    representation's per-step hook before it, as in training (the triplane refreshes its
    occupancy grid there at step 0, then every ``occ_every`` steps)."""
    rep = REPRESENTATIONS[name].from_config(recipe_representation(name))
    rep.train()
    cams = orbit(n_views, 15.0, 2.8, 30.0, size)
    bg = torch.ones(3)
    opts = rep.optimizers()
    steps = itertools.count()

    def step():
        rep.pre_backward(next(steps), opts)
        out = rep.render(cams, bg, generator=torch.Generator().manual_seed(0))
        (out.rgb.mean() + out.alpha.mean()).backward()
        rep.zero_grad(set_to_none=True)

    return median_time(step, repeats)


def bench_step(name: str, prior, repeats: int, method: str = "sds") -> dict[str, float]:
    """One training step of ``name`` + a guidance method with the recipe's settings
    (configs/<name>-<method>.yaml), split into parts; also the prior evaluations of a step."""
    rep = REPRESENTATIONS[name].from_config(recipe_representation(name))
    rep.train()
    recipe = RECIPES.get(f"{name}-{method}")
    cfg = load_config([recipe], ["prompt=a red cube"]).system.guidance if recipe else GUIDANCE[method].Config()
    guidance = GUIDANCE[method](cfg, prior)
    prompts = PromptProcessor(prior, "a red cube")
    opts = {**rep.optimizers(), **guidance.optimizers()}
    bg = torch.ones(3)

    def render(k: int, g: torch.Generator):
        rep.pre_backward(k, opts)  # as training does, before the render
        cams = sample_cameras(4, CameraRanges(), 32, g)
        return rep.render(cams, bg, generator=g).rgb, prompts.conditioning(cams, k)

    return timed_steps(repeats, render, guidance, opts)


def timed_steps(repeats: int, render, guidance, opts: dict) -> dict[str, float]:
    """Medians over ``repeats`` steps (after a warm-up) of the parts of a step: render
    (``render(k, generator) -> (rgb, conditioning)``), the guidance, backward + optimisers;
    with the guidance's prior evaluations per step."""
    parts = {"render": [], "prior": [], "backward+optimiser": []}
    evals = 0
    for k in range(repeats + 1):
        g = torch.Generator().manual_seed(k)
        t0 = time.perf_counter()
        rgb, cond = render(k, g)
        t1 = time.perf_counter()
        guided = guidance(rgb, cond, k, generator=g)
        t2 = time.perf_counter()
        for o in opts.values():
            o.zero_grad()
        guided.loss.backward()
        for o in opts.values():
            o.step()
        t3 = time.perf_counter()
        if k:  # the first is a warm-up
            for key, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[key].append(v)
            evals += guided.prior_evals
    return {**{k: statistics.median(v) for k, v in parts.items()}, "evals": evals / repeats}


def bench_4d_step(video_prior, repeats: int) -> dict[str, float]:
    """One stage-2 video step of the 4D recipe (configs/4d-gaussians-sds.yaml): render T frames
    of dynamic Gaussians from one camera, video SDS (one CFG evaluation of the clip), backward
    and optimiser steps; split into parts, with the prior evaluations of a step."""
    from dataclasses import replace

    cfg = load_config(["4d-gaussians-sds"], ["prompt=a red ball bouncing"]).system
    rep = REPRESENTATIONS[cfg.representation.name].from_config(cfg.representation)
    rep.train()
    v = cfg.video
    guidance = GUIDANCE[v.guidance.name](v.guidance, video_prior)
    prompts = PromptProcessor(video_prior, "a red ball bouncing", cfg=PromptConfig(view_dependent=False))
    bg = torch.ones(3)

    def render(k: int, g: torch.Generator):
        cam = sample_cameras(1, CameraRanges(), v.resolution, g)
        cams = replace(cam[torch.zeros(v.frames, dtype=torch.long)], time=torch.arange(v.frames) / v.frames)
        return rep.render(cams, bg).rgb.transpose(0, 1)[None], prompts.conditioning(cam)  # a clip [1, 3, T, H, W]

    return timed_steps(repeats, render, guidance, rep.optimizers())


def bench_amortized_step(prior, repeats: int) -> dict[str, float]:
    """One step of the amortized recipe (configs/amortized-asd.yaml: 4 prompts x 2 views of its
    corpus, the generator's forward, the renders, ASD, backward through the generator), split
    into parts, with the prior evaluations of a step."""
    cfg = load_config([RECIPES["amortized-asd"]])
    s = cfg.system
    corpus = Corpus(prior, read_corpus(s.amortized.corpus))
    text_dim = corpus.processor(corpus.prompts[0]).text.shape[-1]
    rep = GeneratedTriplanes(build_representation(s.representation), s.amortized.generator, text_dim).train()
    guidance = build_guidance(s.guidance, prior)
    bg = torch.ones(3)

    def render(k: int, g: torch.Generator):
        out, cond = render_corpus(rep, corpus, cfg, k, g, bg)
        return out.rgb, cond

    return timed_steps(repeats, render, guidance, {**rep.optimizers(), **guidance.optimizers()})


def bench_prior(prior, repeats: int, batch: int = 4) -> float:
    """One CFG evaluation (2 x batch images through the UNet) at the prior's resolution."""
    x = torch.randn(2 * batch, 12, prior.resolution // 2, prior.resolution // 2)
    text = prior.encode_prompts(["a red cube", ""] * batch)
    cam = torch.zeros(2 * batch, 10)
    t = torch.full((2 * batch,), 500)
    with torch.no_grad():
        return median_time(lambda: prior.predict_noise(x, t, text, cam), repeats)


def main(args) -> int:
    quick = getattr(args, "quick", False)
    repeats = 2 if quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward+backward, medians")

    def row(case: str, t: str, note: str) -> None:  # printed as measured: the whole bench takes minutes
        print(f"{case:<44}  {t:>9}  {note}", flush=True)

    prior = prior_from_pretrained(EMBEDDED_PATH)
    p = bench_prior(prior, repeats)
    row("prior CFG evaluation x4 views", f"{p * 1e3:.0f} ms",
        f"@{prior.resolution}^2 (its working resolution), 8 UNet images: the floor of a step")
    sizes = (prior.resolution, 64) if quick else (prior.resolution, 64, 128)
    static = [n for n, cls in REPRESENTATIONS.items() if not cls.dynamic]
    for name in static:
        for s in sizes:
            t = bench_render(name, s, repeats)
            row(f"{name} render fwd+bwd @{s}^2 x4 views", f"{t * 1e3:.0f} ms",
                f"{t / p:.2f}x the prior's CFG evaluation (default recipe's sizes)")
    rasterizer_sizes = (prior.resolution, 64) if quick else (prior.resolution, 64, 128)
    counts = (1000, 5000) if quick else (1000, 5000, 20000)
    cases = [(n, s) for s in rasterizer_sizes for n in counts]
    for n, s in cases:
        # The dense reference holds about 30 bytes per Gaussian-pixel pair (10 GB at 20k, 64^2, 4
        # views): past that size it would not fit in this machine's memory.
        dense = 4 * n * s * s <= DENSE_MAX_PAIRS
        r = bench_rasterizer(n, s, n_cameras=4, repeats=repeats, dense=dense, dense_repeats=1)
        ref = (f"dense reference {r['dense'] * 1e3:.0f} ms, tiled is {r['speedup']:.0f}x faster"
               if dense else f"dense reference skipped ({4 * n * s * s / 1e6:.0f}M Gaussian-pixel pairs)")
        row(f"gaussians rasterizer fwd+bwd {n // 1000}k @{s}^2 x4 views", f"{r['tiled'] * 1e3:.0f} ms",
            f"{ref}; {r['tiled'] / p:.2f}x the prior")
    def step_row(case: str, parts: dict) -> None:
        evals = parts.pop("evals")
        total = sum(parts.values())
        detail = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
        row(case, f"{total * 1e3:.0f} ms", f"{detail}; guidance share {parts['prior'] / total:.0%}; {evals:.0f} prior evals")

    steps = [(name, "sds") for name in static] + [("gaussians", m) for m in GUIDANCE if m != "sds"]
    for name, method in steps:
        step_row(f"{name}+{method} full step @32^2 x4 views", bench_step(name, prior, repeats, method))
    step_row("amortized generator+asd step: 4 prompts x 2 views @32^2", bench_amortized_step(prior, repeats))
    if (EMBEDDED_VIDEO_PATH / "unet").is_dir():
        video = prior_from_pretrained(EMBEDDED_VIDEO_PATH)
        step_row("4D video step: dynamic gaussians, 8 frames @32^2", bench_4d_step(video, repeats))
    else:
        row("4D video step", "-", f"skipped: no video prior at {EMBEDDED_VIDEO_PATH}")
    return 0
