"""The guidance comparison table of docs/guidance.md: every method on the same prompts and seeds.

    python -m threedgen.benchmarks.guidance [--representation gaussians] [--jobs 2] [--out outputs/guidance-table]

Each method's recipe (configs/<representation>-<method>.yaml) runs on PROMPTS with seed 0, and
on the first prompt with seeds 1 and 2 too. Runs go through the CLI, ``--jobs`` at a time, one
torch thread each, so every method is timed under the same load. Prints a markdown table:
time per step, prior evaluations per step, IoU and colour error (means over the seed-0 prompts),
shape/colour-correct prompts, and diversity: the mean pairwise pixel distance (mean absolute
difference, 0-1 scale) between the three seeds' final renders from the same orbit views.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from threedgen.world.metrics import passes
from threedgen.registry import GUIDANCE

PROMPTS = ["a red cube", "a green cone", "an orange cylinder"]
SEEDS = [0, 1, 2]


def fit(representation: str, method: str, prompt: str, seed: int, out: Path) -> Path:
    """One CLI run -> its run folder."""
    folder = out / f"{method}-{prompt.split()[-1]}-s{seed}"
    if not list(folder.glob("*/*/metrics.json")):
        cmd = [sys.executable, "-m", "threedgen.cli", "fit", "--config",
               f"{representation}-{method}", f"prompt={prompt}",
               f"trainer.seed={seed}", f"output_dir={folder}", "trainer.threads=1", "trainer.val_every=0",
               "test.n_frames=8", "test.resolution=64"]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return next(folder.glob("*/*/metrics.json")).parent


def diversity(runs: list[Path]) -> float:
    """Mean pairwise mean-absolute pixel difference between runs' test renders (same views)."""
    frames = [np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in sorted((r / "test").glob("*.png"))])
              for r in runs]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(frames, 2)]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--representation", default="gaussians")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs") / "guidance-table")
    ap.add_argument("--methods", nargs="*", default=list(GUIDANCE))
    args = ap.parse_args(argv)
    jobs = [(m, p, 0) for m in args.methods for p in PROMPTS] + [(m, PROMPTS[0], s) for m in args.methods for s in SEEDS[1:]]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(lambda j: fit(args.representation, *j, args.out), jobs)))
    print("| method | s/step | prior evals/step | IoU | colour error | prompts right | diversity |")
    print("|---|---|---|---|---|---|---|")
    for m in args.methods:
        ms = [json.loads((runs[(m, p, 0)] / "metrics.json").read_text()) for p in PROMPTS]
        mean = lambda k: float(np.mean([x[k] for x in ms]))  # noqa: E731
        right = sum(passes(x, min_views=3, min_iou=0.7) for x in ms)
        div = diversity([runs[(m, PROMPTS[0], s)] for s in SEEDS])
        print(f"| {m} | {mean('seconds_per_step'):.3f} | {mean('prior_evals_per_step'):.0f} | {mean('iou'):.3f} | "
              f"{mean('colour_error'):.3f} | {right}/{len(PROMPTS)} | {div:.4f} |")


if __name__ == "__main__":
    main()
