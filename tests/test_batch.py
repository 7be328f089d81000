"""``threedgen batch`` on a local Ray cluster started here (2 CPUs, 2 workers of 1 CPU): every
prompt ends with one row and (unless invalid) one run folder; a worker killed with SIGKILL mid-fit
is replaced and its prompt resumes from its checkpoint; a bad prompt fails alone; a re-run does
nothing for finished prompts and resumes unfinished ones."""

import csv
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import torch

from tests.helpers import REPO
from threedgen.cli import main

GAUSSIANS = str(REPO / "configs" / "gaussians-sds.yaml")
STEPS = 16
# Short fits: 16 steps of one 32x32 view, a checkpoint every 4 steps, small end-of-run renders.
SMALL = [f"trainer.max_steps={STEPS}", "trainer.ckpt_every=4", "trainer.threads=1", "trainer.val_every=0",
         "system.camera.batch_size=1", "test.n_frames=2", "test.resolution=32", "test.eval_times=2", "test.export=[]"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def batch(prompts: Path, out: Path, *args) -> int:
    return main(["batch", str(prompts), "--config", GAUSSIANS, "--out", str(out), *args])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def saved_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["step_count"])


class Killer(threading.Thread):
    """Kills (SIGKILL) the worker of the first running prompt whose checkpoint holds 4 or 8 of
    its 16 steps: mid-fit, with half the fit or more still ahead. ``killed``: its index,
    pid and the checkpoint's step once the worker is dead."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.killed, self.error, self.stop = out, {}, None, threading.Event()

    def run(self):
        try:
            while not self.stop.is_set() and not self.killed:
                self.try_kill()
                time.sleep(0.1)
        except Exception as e:  # raised again in the test
            self.error = e

    def try_kill(self):
        if not (self.out / "index.jsonl").is_file():
            return
        for row in rows(self.out):
            ckpt = self.out / str(row["run"]) / "ckpts" / "last.ckpt"
            if row["status"] == "running" and ckpt.is_file() and 4 <= saved_step(ckpt) <= STEPS // 2:
                pid = int(row["worker"].rsplit(":", 1)[1])
                assert pid in {p.pid for p in psutil.Process().children(recursive=True)}  # our cluster's
                os.kill(pid, signal.SIGKILL)
                psutil.Process(pid).wait(timeout=30)
                self.killed = {"index": row["index"], "pid": pid, "step": saved_step(ckpt)}
                return


def run_killing_one_worker(prompts, out, *args) -> tuple[int, dict]:
    killer = Killer(out)
    killer.start()
    try:
        rc = batch(prompts, out, *args)
    finally:
        killer.stop.set()
        killer.join()
    if killer.error:
        raise killer.error
    assert killer.killed, "no worker was caught mid-fit"
    return rc, killer.killed


def assert_complete_run(run: Path):
    assert saved_step(run / "ckpts" / "last.ckpt") == STEPS
    assert json.loads((run / "metrics.json").read_text())["steps"] == STEPS
    steps = [int(r["step"]) for r in csv.DictReader((run / "logs" / "metrics.csv").open())]
    assert steps == list(range(1, STEPS + 1))  # every step once, also across the kill


def weights(run: Path) -> dict:
    state = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("representation.")}


def test_batch_survives_a_killed_worker_and_a_bad_prompt_and_reruns_as_a_no_op(tmp_path, cluster, capsys):
    good = ["a red cube", "a blue sphere", "an orange cone", "a green torus", "a yellow cylinder", "a purple mug"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# six prompts and a bad one\n" + "\n".join([*good[:3], "a plaid cube", *good[3:]]) + "\n")
    out = tmp_path / "batch"
    rc, killed = run_killing_one_worker(prompts, out, "--workers", "2", "--retries", "1", *SMALL)
    printed = capsys.readouterr().out
    assert rc == 1  # not every prompt is ok: the bad one

    table = rows(out)
    assert [r["index"] for r in table] == list(range(1, 8))
    assert [r["prompt"] for r in table] == [*good[:3], "a plaid cube", *good[3:]]
    bad = table[3]
    assert bad["status"] == "invalid" and "'plaid'" in bad["error"] and "\n" not in bad["error"]
    assert bad["run"] is None and not list(out.glob("004-*"))
    ok = [r for r in table if r is not bad]
    assert all(r["status"] == "ok" for r in ok), [r["error"] for r in ok]
    with open(out / "index.csv") as f:
        assert [(int(r["index"]), r["status"]) for r in csv.DictReader(f)] == [(r["index"], r["status"]) for r in table]

    # the report index page links every run's report
    page = (out / "index.html").read_text()
    assert all(f'href="{r["run"]}/report.html"' in page for r in ok) and "a plaid cube" not in page

    # one run folder per good prompt, complete; named by place and prompt
    folders = sorted(p.parent.name for p in out.glob("*/config.yaml"))
    assert folders == sorted(r["run"] for r in ok) == ["001-a_red_cube", "002-a_blue_sphere", "003-an_orange_cone",
                                                       "005-a_green_torus", "006-a_yellow_cylinder", "007-a_purple_mug"]
    for r in ok:
        assert_complete_run(out / r["run"])
        assert r["metrics"]["prompt"] == r["prompt"] and r["seconds"] > 0

    # the killed prompt ran twice and the second run started from the checkpoint, not from step 0
    victim = table[killed["index"] - 1]
    assert victim["attempts"] == 2 and victim["resumed_from"] == killed["step"] > 0
    assert not victim["worker"].endswith(f":{killed['pid']}")  # a new worker finished it
    assert all(r["attempts"] == 1 and r["resumed_from"] == 0 for r in ok if r is not victim)
    assert f"resumed from step {killed['step']}" in printed and "[retry]" in printed
    # workers keep their prior: loaded once per worker process (two, and the killed one's replacement)
    assert 1 <= sum(r["prior_seconds"] > 0 for r in ok) <= 3

    # the resumed run ends where an uninterrupted one does
    assert main(["fit", "--config", GAUSSIANS, f"output_dir={tmp_path / 'straight'}", f"prompt={victim['prompt']}",
                 *SMALL]) == 0
    (straight,) = (tmp_path / "straight").glob("*/*/ckpts/last.ckpt")
    want, got = weights(straight.parents[1]), weights(out / victim["run"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)

    # the same command again: nothing runs, nothing is written in the run folders
    files = {p: p.stat().st_mtime_ns for p in out.glob("0*/**/*") if p.is_file()}
    capsys.readouterr()
    assert batch(prompts, out, "--workers", "2", "--retries", "1", *SMALL) == 1
    assert "6 ok, 1 invalid of 7 prompts (0 run now)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("0*/**/*") if p.is_file()} == files
    assert rows(out) == table


def test_a_prompt_whose_worker_dies_past_its_retries_fails_and_a_rerun_resumes_it(tmp_path, cluster, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "batch"
    rc, killed = run_killing_one_worker(prompts, out, "--workers", "1", "--retries", "0", *SMALL)
    (row,) = rows(out)
    assert rc == 1 and row["status"] == "failed" and "worker died 1 times" in row["error"]
    assert row["run"] == "001-a_red_cube" and saved_step(out / row["run"] / "ckpts" / "last.ckpt") == killed["step"]

    assert batch(prompts, out, "--retries", "0", *SMALL) == 0
    (row,) = rows(out)
    assert row["status"] == "ok" and row["resumed_from"] == killed["step"] > 0 and row["attempts"] == 1
    assert_complete_run(out / row["run"])
    assert "1 ok of 1 prompts (1 run now)" in capsys.readouterr().out

    # another recipe in the same folder: refused before anything runs
    assert batch(prompts, out, *SMALL, "system.guidance.guidance_scale=7") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "system.guidance.guidance_scale: 5.0 -> 7.0" in err


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("threedgen: error: ") and err.count("\n") == 1
    return err


def test_batch_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    base = ["batch", str(prompts), "--config", GAUSSIANS, "--out", str(tmp_path / "b")]
    assert "cannot read the prompts file" in one_line_error(capsys, ["batch", str(tmp_path / "none.txt"),
                                                                     "--config", GAUSSIANS])
    assert "no prompts" in one_line_error(capsys, ["batch", str(empty), "--config", GAUSSIANS])
    assert "--workers: must be at least 1" in one_line_error(capsys, [*base, "--workers", "0"])
    assert "did you mean max_steps" in one_line_error(capsys, [*base, "trainer.max_step=3"])
    assert "resources.gpus: a prompt needs 1 GPU, the largest node of the Ray cluster has 0" in one_line_error(capsys, [*base, "resources.gpus=1", "--workers", "1"])
    assert not (tmp_path / "b" / "001-a_red_cube").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert "pip install 'threedgen[batch]'" in one_line_error(capsys, base)


def test_workers_pack_one_prompt_per_gpu():
    """The default worker count from each node's Ray resources: one prompt per GPU where there
    are GPUs (two per GPU with resources.gpus=0.5), one per CPU elsewhere; a need no node meets
    is refused."""
    from threedgen import config as C
    from threedgen.batch import BatchError, worker_options, workers_that_fit

    gpu_nodes = [{"CPU": 32.0, "GPU": 4.0, "memory": 200 * 2**30}, {"CPU": 16.0, "GPU": 2.0, "memory": 100 * 2**30}]
    cpu_nodes = [{"CPU": 2.0, "memory": 8 * 2**30}]

    def count(nodes, **res):
        return workers_that_fit(worker_options(C.ResourcesConfig(**res), nodes), nodes)

    assert worker_options(C.ResourcesConfig(), gpu_nodes) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert count(gpu_nodes) == 6 and count(gpu_nodes, gpus=0.5) == 12
    assert count(gpu_nodes, cpus=8) == 4 + 2  # 32 // 8 and min(16 // 8, 2)
    assert count(gpu_nodes, memory_gb=60) == 3 + 1
    assert count(cpu_nodes) == 2 and count(cpu_nodes, cpus=2) == 1
    with pytest.raises(BatchError, match="resources.memory_gb: a prompt needs 250 GiB of memory, the largest node"):
        worker_options(C.ResourcesConfig(memory_gb=250), gpu_nodes)
    with pytest.raises(BatchError, match="resources.gpus"):
        worker_options(C.ResourcesConfig(gpus=1), cpu_nodes)
