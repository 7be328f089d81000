"""Faults during a run: a full disk, a diverging optimisation, and kill -9 while a checkpoint is
written, while an export is written and while a resumed run trains. Nothing is lost: the last
good checkpoint survives, no temporary or partial file stays, and after a resume the log holds
every step once and the run equals an uninterrupted one (weights, log, metrics.json, exports)."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from threedgen.systems.text_to_3d import TextTo3D
from tests.helpers import REPO, TINY, run_dirs
from threedgen.cli import main
from threedgen.export.splat import read_splat_ply
from threedgen.representations.gaussians import Gaussians

GAUSSIANS = str(REPO / "configs" / "gaussians-sds.yaml")
STEPS = ["prompt=a green cone", "trainer.max_steps=6", "trainer.ckpt_every=2", "trainer.threads=1"]
ARGS = ["fit", "--config", GAUSSIANS, *TINY, *STEPS, "test.export=[splat]"]
TIMING = ("fit_seconds", "seconds_per_step")  # wall-clock: the only values a resume may change


def ckpt_step(run: Path) -> int:
    return int(torch.load(run / "ckpts" / "last.ckpt", weights_only=True)["state_dict"]["step_count"])


def log_rows(run: Path) -> list[dict]:
    with open(run / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("threedgen: error: ") and "Traceback" not in err, err
    return err


def temporaries(run: Path) -> list[Path]:
    return list(run.rglob(".*.tmp*"))


# --- a full disk and divergence, in process ---------------------------------------------------------

def test_checkpoint_on_full_disk_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    """The second checkpoint write fails half-way with ENOSPC: one line, exit 1, the temporary
    file removed, the first checkpoint intact; the run then resumes to the end, logging every step once."""
    save, calls = pl.Trainer.save_checkpoint, []

    def full_disk(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", full_disk)
    assert main([*ARGS, f"output_dir={tmp_path}", "test.export=[]"]) == 1
    assert "last.ckpt (No space left on device); last.ckpt is left as it was" in one_line(capsys)
    (run,) = run_dirs(tmp_path)
    assert not temporaries(run)
    assert ckpt_step(run) == 2
    monkeypatch.undo()
    assert main(["fit", "--resume", str(run)]) == 0
    assert [int(r["step"]) for r in log_rows(run)] == [1, 2, 3, 4, 5, 6]
    assert ckpt_step(run) == 6


@pytest.mark.parametrize("what", ["loss", "parameter"])
def test_non_finite_stops_training(tmp_path, capsys, monkeypatch, what):
    """A NaN at step 3 (in the loss, or in a parameter after the update) stops the run with one
    line naming the step and the tensor; the checkpoint of step 2 stays, finite, and evaluates."""
    if what == "loss":
        distill = TextTo3D.distill

        def nan_loss(self, step, g, *args, **kwargs):
            out, guided = distill(self, step, g, *args, **kwargs)
            return out, replace(guided, loss=guided.loss * (math.nan if step == 2 else 1.0))

        monkeypatch.setattr(TextTo3D, "distill", nan_loss)
        expect = "step 3: the loss became non-finite (NaN or Inf)"
    else:
        post_step = Gaussians.post_step

        def nan_parameter(self, step, out, optimizers):
            post_step(self, step, out, optimizers)
            if step == 2:
                with torch.no_grad():
                    self.params["scales"][0, 0] = math.inf

        monkeypatch.setattr(Gaussians, "post_step", nan_parameter)
        expect = "step 3: representation.params.scales became non-finite (NaN or Inf)"
    assert main([*ARGS, f"output_dir={tmp_path}", "trainer.ckpt_every=1", "test.export=[]"]) == 1
    err = one_line(capsys)
    (run,) = run_dirs(tmp_path)
    assert expect in err and f"{run}/ckpts/last.ckpt keeps the last finite state" in err, err
    assert ckpt_step(run) == 2
    assert [int(r["step"]) for r in log_rows(run)] == [1, 2]
    assert main(["eval", str(run)]) == 0


# --- kill -9 ------------------------------------------------------------------------------------------

# Runs the CLI with os.replace hanging at its HANG_AT-th rename onto a file named HANG_ON (the
# temporary file is complete, the final name not yet written), after touching MARKER.
RUNNER = """
import os, sys, time
from pathlib import Path
from threedgen.cli import main
from threedgen.export.splat import read_splat_ply
rename, seen = os.replace, []
def hanging_replace(src, dst, *args, **kwargs):
    if Path(dst).name == os.environ["HANG_ON"]:
        seen.append(dst)
        if len(seen) == int(os.environ["HANG_AT"]):
            Path(os.environ["MARKER"]).touch()
            time.sleep(600)
    return rename(src, dst, *args, **kwargs)
os.replace = hanging_replace
sys.exit(main(sys.argv[1:]))
"""


def kill_when_hung(argv: list[str], hang_on: str, hang_at: int, tmp: Path) -> None:
    """Run the CLI in a subprocess and SIGKILL it while it hangs at that rename."""
    marker = tmp / f"hung-{time.monotonic_ns()}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "HANG_ON": hang_on, "HANG_AT": str(hang_at), "MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, f"ended before the rename of {hang_on}: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must equal."""
    out = tmp_path_factory.mktemp("straight")
    assert main([*ARGS, f"output_dir={out}"]) == 0
    (run,) = run_dirs(out)
    return run


def assert_same_as_straight(run: Path, straight: Path) -> None:
    assert not temporaries(run), temporaries(run)
    a, b = (torch.load(r / "ckpts" / "last.ckpt", weights_only=True)["state_dict"] for r in (run, straight))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rows, want = log_rows(run), log_rows(straight)
    assert [int(r["step"]) for r in rows] == list(range(1, 7))  # every step, once
    for r, w in zip(rows, want):
        assert r.keys() == w.keys()
        assert all(math.isclose(float(r[k]), float(w[k]), rel_tol=1e-5) for k in r)
    m, w = (json.loads((r / "metrics.json").read_text()) for r in (run, straight))
    assert m.keys() == w.keys()  # fit_seconds, seconds_per_step, prior_evals_per_step included
    assert {k: v for k, v in m.items() if k not in TIMING} == {k: v for k, v in w.items() if k not in TIMING}
    splat, want_splat = (read_splat_ply(r / "export" / "splat.ply").params for r in (run, straight))
    for k in want_splat:
        torch.testing.assert_close(splat[k], want_splat[k], rtol=1e-5, atol=1e-6)


def test_kill_during_checkpoint_write(tmp_path, straight):
    """Killed while renaming its second checkpoint (step 4) into place: step 2's stays, the log
    holds steps 1-4; the resume drops rows 3-4, runs them again and ends equal to the straight run."""
    kill_when_hung([*ARGS, f"output_dir={tmp_path}"], "last.ckpt", 2, tmp_path)
    (run,) = run_dirs(tmp_path)
    assert ckpt_step(run) == 2 and temporaries(run)
    assert [int(r["step"]) for r in log_rows(run)] == [1, 2, 3, 4]
    assert main(["fit", "--resume", str(run)]) == 0
    assert_same_as_straight(run, straight)


def test_kill_during_export(tmp_path, straight):
    """Killed while the end-of-run export renames splat.ply into place: no splat.ply (no partial
    file under its name); resuming the finished run writes the same metrics and export."""
    kill_when_hung([*ARGS, f"output_dir={tmp_path}"], "splat.ply", 1, tmp_path)
    (run,) = run_dirs(tmp_path)
    assert ckpt_step(run) == 6 and not (run / "export" / "splat.ply").exists()
    assert main(["fit", "--resume", str(run)]) == 0
    assert_same_as_straight(run, straight)


def test_kill_during_resume(tmp_path, straight):
    """Killed at step 4's checkpoint, resumed, the resume killed at its own first checkpoint
    (step 4 again), resumed again: equal to the straight run."""
    kill_when_hung([*ARGS, f"output_dir={tmp_path}"], "last.ckpt", 2, tmp_path)
    (run,) = run_dirs(tmp_path)
    kill_when_hung(["fit", "--resume", str(run)], "last.ckpt", 1, tmp_path)
    assert ckpt_step(run) == 2
    assert main(["fit", "--resume", str(run)]) == 0
    assert_same_as_straight(run, straight)
