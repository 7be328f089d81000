"""Shared helpers for tests that run real (tiny) fits."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Small end-of-run outputs so tests stay fast; the optimisation itself is real.
TINY = ["test.n_frames=4", "test.resolution=32", "trainer.val_every=0", "test.export=[]", "test.eval_times=2"]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).glob("*/*/config.yaml"))
