"""``threedgen bench --gpu``: one full training step of each real-prior recipe at its real scale,
split into its parts, against the floor it cannot beat.

Each recipe runs on random weights of its prior's published shape (``real_priors.random_parts``;
no download), with the recipe's own renders, prior resolution, dtype and guidance. A step is
timed as a whole and split into render (the representation's forward), encode (the VAE
encoder's forward), prior (every UNet call: the CFG branches, VSD's LoRA copy, ISM's inversion)
and backward + optimiser (the rest). The floor is one classifier-free-guided UNet evaluation of
the step's batch (a CFG pair), measured in the same run. Medians of a few steps after a warm-up;
CUDA timings are synchronised. Peak memory is the step's, from torch.cuda.

    threedgen bench --gpu [--recipes dreamfusion-sd ...] [--repeats 3]
    python -m threedgen.benchmarks.gpu_step --device cpu --recipes mvdream-sds system.prior.dtype=float32 \
        system.camera.resolution=32    # a dry run on the CPU

Without CUDA (and no ``--device``) it prints one line saying it is skipped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from threedgen.benchmarks.real_priors import random_parts
from threedgen.benchmarks.run import median_time
from threedgen import config as C
from threedgen.cameras import sample_cameras
from threedgen.priors.cfg import predict_branches
from threedgen.registry import PRIOR_FAMILIES, load_prior
from threedgen.systems.text_to_3d import TextTo3D

# recipe -> the published family its prior has (None: the embedded prior, for a dry run)
RECIPES = {"dreamfusion-sd": "sd21", "prolificdreamer": "sd21", "luciddreamer": "sd21", "dreamer-xl": "sdxl",
           "mvdream-sds": "mvdream", "gaussians-sds": None}
ADAPTERS = {"sd21": "sd", "sdxl": "sdxl", "mvdream": "mvdream"}  # published family -> threedgen.registry.PRIOR_FAMILIES
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_system(recipe: str, device: torch.device, run_dir: Path, overrides: list[str] = ()):
    """The recipe's system on ``device`` with a random-weight prior of its published shape."""
    cfg = C.load([recipe], ["prompt=a red cube", *overrides])
    family = RECIPES[recipe]
    if family is None:
        prior = load_prior(cfg.system.prior)
    else:
        parts = random_parts(family, DTYPES[cfg.system.prior.dtype], device=device)
        prior = PRIOR_FAMILIES[ADAPTERS[family]](parts["unet"], parts["text_encoders"], parts["tokenizers"],
                                                 parts["scheduler"], parts["vae"], resolution=cfg.system.prior.resolution)
    return TextTo3D(cfg, run_dir, prior=prior).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(parts: dict, name: str, fn, device):
    """fn, adding its synchronised wall time to parts[name]."""
    def call(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        parts[name] += time.perf_counter() - t0
        return out
    return call


def step_parts(system, device: torch.device, repeats: int) -> dict:
    """Median seconds of a step and of its parts, prior evaluations and peak memory (GiB)."""
    parts = {"render": 0.0, "encode": 0.0, "prior": 0.0}
    rep, prior = system.representation, system.prior
    rep.render = _timed(parts, "render", rep.render, device)
    prior.encode_images = _timed(parts, "encode", prior.encode_images, device)
    prior.run_unet = _timed(parts, "prior", prior.run_unet, device)
    opts = system.representation.optimizers()
    guide = {f"guidance/{k}": o for k, o in system.guidance.optimizers().items()}
    system.on_train_start()
    rows = []
    for k in range(repeats + 1):
        for name in parts:
            parts[name] = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        system.optimise(opts, guide)
        _sync(device)
        total = time.perf_counter() - t0
        if k:  # the first step warms up (kernels, allocator)
            rows.append({**parts, "step": total, "backward": total - sum(parts.values())})
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    med["prior_evals"] = system._evals / system._steps
    med["peak_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return med


@torch.no_grad()
def cfg_pair_floor(system, device: torch.device, repeats: int) -> float:
    """Median seconds of one CFG pair through the prior's UNet: the step's B views, conditional
    and unconditional, in one batch of 2B (``priors.cfg.predict_branches``)."""
    prior, c = system.prior, system.cfg.system.camera
    cams = sample_cameras(c.batch_size, system.ranges, c.resolution, torch.Generator().manual_seed(0),
                          c.views_per_group).to(device)
    cond = system.prompts.conditioning(cams)
    size = prior.resolution // prior.factor
    x = torch.randn(c.batch_size, prior.unet.config.in_channels, size, size, device=device)
    t = torch.full((c.batch_size,), 500, device=device)
    branches = [(cond.text, cond.camera), (cond.uncond, cond.null_camera)]
    return median_time(lambda: (predict_branches(prior, x, t, branches), _sync(device)), repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=[r for r, f in RECIPES.items() if f], choices=list(RECIPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="default: cuda, skipped without it")
    ap.add_argument("overrides", nargs="*", help="key=value for every recipe, e.g. system.prior.dtype=float32 "
                                                "for a dry run on the CPU")
    args = ap.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print("bench --gpu: skipped (no CUDA device)")
        return 0
    device = torch.device(args.device or "cuda")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"One training step per recipe on {where}, random weights of the published shapes; seconds "
          f"(medians of {args.repeats}), ratios to the CFG pair measured in the same run.")
    print("| recipe | views x render | prior res, dtype | step | render | encode | prior | backward+opt "
          "| CFG pair (floor) | step / floor | render / floor | prior evals | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        with tempfile.TemporaryDirectory() as tmp:
            system = build_system(recipe, device, Path(tmp), args.overrides)
            p = step_parts(system, device, args.repeats)
            floor = cfg_pair_floor(system, device, args.repeats)
        c, pr = system.cfg.system.camera, system.cfg.system.prior
        print(f"| {recipe} | {c.batch_size} x {c.resolution}^2 | {system.prior.resolution}^2, {pr.dtype} "
              f"| {p['step']:.3f} | {p['render']:.3f} | {p['encode']:.3f} | {p['prior']:.3f} | {p['backward']:.3f} "
              f"| {floor:.3f} | {p['step'] / floor:.2f} | {p['render'] / floor:.2f} | {p['prior_evals']:.0f} "
              f"| {p['peak_GiB']:.1f} |", flush=True)
        del system
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
