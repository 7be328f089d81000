"""Throughput of ``threedgen batch`` against one ``threedgen fit`` process per prompt.

    python -m benchmarks.batch_throughput [--prompts 12] [--steps 100] [--workers 2] [--out DIR]

Fits the same prompts (world colours x shapes) with ``configs/gaussians-sds.yaml`` shortened to
``--steps`` (its export, a textured glb, kept) twice on this machine: one ``threedgen fit``
process after another (torch's default threads: every core), then one ``threedgen batch`` on a
local Ray cluster with ``--workers`` workers of one CPU each. Prints a JSON record: wall times,
their ratio, and where the time went, summed over prompts, from each run folder's files:
training (config.yaml written -> last checkpoint), end-of-run renders and metrics (-> metrics.json),
export (-> export/mesh.glb); prior loading (the batch's index; for the processes, one load timed
in a fresh process, times the prompt count); the rest is start-up (interpreter, imports, Ray).
Not part of the test suite: minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "gaussians-sds.yaml"
COLOURS = ("red", "blue", "green", "orange", "yellow", "purple")
SHAPES = ("cube", "sphere", "cone", "cylinder", "torus", "mug")


def prompts(n: int) -> list[str]:
    """Up to 36 different prompts, the colour and the shape both changing from one to the next."""
    colours = [COLOURS[(i + i // 6) % 6] for i in range(n)]
    return [f"{'an' if c == 'orange' else 'a'} {c} {SHAPES[i % 6]}" for i, c in enumerate(colours)]


def overrides(steps: int) -> list[str]:
    return [f"trainer.max_steps={steps}", f"trainer.ckpt_every={steps}", "trainer.val_every=0"]


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def phases(run: Path) -> dict:
    """Seconds of training, end-of-run renders + metrics, and export, from the files' times."""
    t = {name: (run / name).stat().st_mtime for name in
         ("config.yaml", "ckpts/last.ckpt", "metrics.json", "export/mesh.glb")}
    return {"train": t["ckpts/last.ckpt"] - t["config.yaml"], "renders_metrics": t["metrics.json"] - t["ckpts/last.ckpt"],
            "export": t["export/mesh.glb"] - t["metrics.json"]}


def summed(runs: list[Path]) -> dict:
    totals = {"train": 0.0, "renders_metrics": 0.0, "export": 0.0}
    for run in runs:
        for k, v in phases(run).items():
            totals[k] += v
    return totals


def prior_load_seconds(env: dict) -> float:
    code = ("import time; from threedgen.config import PriorConfig; from threedgen.registry import load_prior; "
            "t = time.perf_counter(); load_prior(PriorConfig()); print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True,
                                text=True).stdout.split()[-1])


def with_rest(wall: float, parts: dict) -> dict:
    """The parts as seconds of the wall time: summed over prompts, divided by the workers that
    ran them side by side; 'rest' is what is left (start-up, imports, Ray, waiting)."""
    return {**{k: round(v, 1) for k, v in parts.items()}, "rest": round(wall - sum(parts.values()), 1)}


def main(argv: list[str] | None = None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--prompts", type=int, default=12)
    a.add_argument("--steps", type=int, default=100)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--out", help="where the runs go (default: a temporary folder)")
    args = a.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="batch-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    texts, extra = prompts(args.prompts), overrides(args.steps)
    fit = [sys.executable, "-m", "threedgen.cli", "fit", "--config", str(RECIPE), f"output_dir={out / 'processes'}", *extra]
    load = os.getloadavg()

    sequential = sum(timed([*fit, f"prompt={p}"], env) for p in texts)
    (out / "prompts.txt").write_text("\n".join(texts) + "\n")
    batch = timed([sys.executable, "-m", "threedgen.cli", "batch", str(out / "prompts.txt"), "--config", str(RECIPE),
                   "--out", str(out / "batch"), "--workers", str(args.workers), *extra], env)
    rows = [json.loads(line) for line in (out / "batch" / "index.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]

    seq_parts = {**summed([p.parent for p in (out / "processes").glob("*/*/metrics.json")]),
                 "prior_load": prior_load_seconds(env) * len(texts)}
    batch_parts = {**summed([out / "batch" / r["run"] for r in rows]), "prior_load": sum(r["prior_seconds"] for r in rows)}
    record = {
        "prompts": len(texts), "steps": args.steps, "workers": args.workers, "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load], "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "sequential_seconds": round(sequential, 1), "batch_seconds": round(batch, 1),
        "speedup": round(sequential / batch, 2),
        "sequential_parts": with_rest(sequential, seq_parts),
        "batch_parts_per_worker": with_rest(batch, {k: v / args.workers for k, v in batch_parts.items()}),
        "batch_parts_summed": {k: round(v, 1) for k, v in batch_parts.items()},
        "out": str(out),
    }
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
