"""ScaleDreamer's claim on the embedded world: amortized ASD, SDS and VSD at two corpus sizes.

    python -m benchmarks.amortized_corpus [--steps 1500] [--seed 0] [--methods asd sds vsd]
        [--corpora world-6 world-train] [--workers 2] [--out DIR]

Trains one generator per (method, corpus) with ``configs/amortized-<method>.yaml`` as shipped
but for ``--steps``, ``--seed`` (``trainer.seed``) and the corpus
(``configs/corpora/<corpus>.txt``), one torch thread a run and ``--workers`` runs at once;
asks each for every prompt of ``configs/corpora/world-all.txt`` (``threedgen generate``);
prints a Markdown table: how many training prompts pass (``world.metrics.passes``) and their
mean IoU, the same for the prompts of ``world-held-out.txt``, and seconds a training step.
At 1500 steps on an idle 2-core machine a run trains in about 7 minutes (ASD, SDS) or 11 (VSD),
and generating 36 prompts takes about 90 s. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean

from threedgen.amortized import read_corpus
from threedgen.world.metrics import passes

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT / "configs" / "corpora"


def train_and_generate(method: str, corpus: str, steps: int, seed: int, out: Path) -> tuple[Path, list[dict]]:
    """One generator run; returns its folder and ``generate``'s records for all 36 prompts."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "threedgen.cli"]
    name = f"{method}-{corpus}-{steps}-seed{seed}"
    subprocess.run([*cli, "fit", "--config", str(ROOT / "configs" / f"amortized-{method}.yaml"),
                    f"system.amortized.corpus={CORPORA / f'{corpus}.txt'}", f"trainer.max_steps={steps}",
                    f"trainer.seed={seed}", "trainer.threads=1", f"output_dir={out}", f"name={name}"],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (run,) = (out / name).glob("*/")
    made = subprocess.run([*cli, "generate", str(run), "--prompts", str(CORPORA / "world-all.txt")],
                          cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return run, json.loads(made.stdout)


def row(method: str, corpus: str, run: Path, records: list[dict]) -> str:
    seen, held = set(read_corpus(CORPORA / f"{corpus}.txt")), set(read_corpus(CORPORA / "world-held-out.txt"))

    def cell(prompts: set[str]) -> str:
        rs = [r for r in records if r["prompt"] in prompts]
        return f"{sum(map(passes, rs))}/{len(rs)}, {mean(r['iou'] for r in rs):.3f}" if rs else "-"

    step = json.loads((run / "metrics.json").read_text())["seconds_per_step"]
    return f"| {method} | {corpus} | {cell(seen)} | {cell(held - seen)} | {step:.2f} |"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["asd", "sds", "vsd"])
    ap.add_argument("--corpora", nargs="+", default=["world-6", "world-train"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="amortized-corpus-"))).resolve()
    jobs = [(m, c) for c in args.corpora for m in args.methods]
    with ThreadPoolExecutor(args.workers) as pool:
        done = list(pool.map(lambda job: train_and_generate(*job, args.steps, args.seed, out), jobs))
    print(f"{args.steps} steps, seed {args.seed}, runs in {out}\n")
    print("| method | corpus | seen: pass, mean IoU | held out: pass, mean IoU | s/step |\n|---|---|---|---|---|")
    for (method, corpus), (run, records) in zip(jobs, done):
        print(row(method, corpus, run, records))


if __name__ == "__main__":
    main()
