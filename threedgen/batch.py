"""``threedgen batch PROMPTS.txt --config RECIPE``: many prompts on a Ray cluster, one task each.

The batch folder (``--out``; default ``<output_dir>/<name>/batch-<PROMPTS file stem>``) holds

- ``batch.json``: the prompts, the recipe files and overrides, the resolved recipe, versions;
- ``NNN-<prompt-slug>/``: one ordinary run folder per prompt (NNN: its place in the file);
- ``index.jsonl`` and ``index.csv``: one row per prompt (status, run folder, seconds, metrics,
  one-line error), rewritten whenever a prompt starts or ends;
- ``index.html``: the run report's index page (``threedgen report``) of the run folders, written
  when the batch ends (each fit wrote its own ``report.html``).

Each worker is one Ray actor that fits prompts one after another and keeps the priors it loaded
(by their config) between them; it reserves the recipe's ``resources`` (CPUs, GPUs, memory).
A row's status is ``ok``; ``invalid`` (the prompt's input is bad, e.g. a word outside the
prior's vocabulary: it fails alone, and a re-run keeps its row); ``failed`` (a fault, or its
worker died more than ``--retries`` times: a re-run tries it again); ``pending`` or ``running``
while the batch runs. A worker that dies (killed, out of memory, its node lost) is replaced, and
its prompt resumes from the run folder's last checkpoint. Re-running the same command skips the
prompts that are ok or invalid and resumes the others, so nothing is done twice or lost.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import importlib.metadata
import io
import json
import logging
import os
import platform
import shutil
import socket
import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from threedgen import config as C
from threedgen import runs
from threedgen.export.formats import ExportError
from threedgen.files import atomic_write
from threedgen.priors.base import PriorLoadError, PromptError
from threedgen.report import build as report

INSTALL = "threedgen batch needs Ray: pip install 'threedgen[batch]' (or pip install ray)"
FIELDS = ("index", "prompt", "status", "run", "seconds", "prior_seconds", "attempts", "resumed_from",
          "worker", "error")
FINAL = ("ok", "invalid")  # statuses a re-run keeps
INVALID = (C.ConfigError, PromptError)  # bad input: the prompt fails alone, the same way every time


class BatchError(RuntimeError):
    """A batch that cannot start (bad prompts file, busy or foreign batch folder, no Ray); one line."""


@dataclass(frozen=True)
class Job:
    """One prompt: its place (1-based), its run folder (absolute: workers may run elsewhere), its
    config (None when invalid: ``error`` says why) and the ``threedgen fit`` command it equals."""

    index: int
    prompt: str
    run: str
    cfg: C.RunConfig | None
    argv: tuple[str, ...]
    error: str | None = None


# --- inputs ----------------------------------------------------------------------------------------

def read_prompts(path: Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"{path}: cannot read the prompts file ({getattr(e, 'strerror', None) or e})") from None
    prompts = [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith("#")]
    if not prompts:
        raise BatchError(f"{path}: no prompts (one a line; blank lines and # comments are skipped)")
    return prompts


def make_jobs(prompts: list[str], configs: list[str], overrides: list[str], out: Path) -> list[Job]:
    """A job per prompt, each config loaded as ``threedgen fit`` loads it (a config error
    makes that prompt alone invalid)."""
    width = max(3, len(str(len(prompts))))
    jobs = []
    for i, prompt in enumerate(prompts, 1):
        argv = ("threedgen", "fit", *(w for c in configs for w in ("--config", str(c))), *overrides, f"prompt={prompt}")
        run = str(out / f"{i:0{width}d}-{runs.slug(prompt)}")
        try:
            jobs.append(Job(i, prompt, run, C.load(configs, [*overrides, f"prompt={prompt}"]), argv))
        except C.ConfigError as e:
            jobs.append(Job(i, prompt, run, None, argv, str(e)))
    return jobs


def recipe(cfg: C.RunConfig) -> dict:
    """What makes a batch itself: the resolved config but the prompt and the resources (a re-run
    may move to other machines)."""
    data = json.loads(json.dumps(C.to_dict(cfg)))
    return {k: v for k, v in data.items() if k not in ("prompt", "resources")}


def first_difference(a, b, path: str = "") -> str:
    """The first dotted path where two resolved configs differ, as 'path: old -> new'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {a!r} -> {b!r}"


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("threedgen", "torch", "diffusers", "transformers", "pytorch-lightning", "ray"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


# --- the batch folder ------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(out: Path):
    """Create the batch folder and hold its lock: one ``threedgen batch`` at a time per folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".lock", os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as e:
        raise BatchError(f"batch folder {out} is not writable ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BatchError(f"{out}: another threedgen batch is running on this folder") from None
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def write_batch_json(out: Path, record: dict) -> None:
    """batch.json; a folder that already holds a batch must hold this recipe."""
    path = out / "batch.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())["recipe"]
        except (ValueError, KeyError, OSError):
            raise BatchError(f"{path}: not a readable batch record; give another --out") from None
        if old != record["recipe"]:
            raise BatchError(f"{out}: holds a batch of another recipe ({first_difference(old, record['recipe'])}); "
                             "re-run it with its own config and overrides, or give another --out")
    atomic_write(path, json.dumps(record, indent=2) + "\n")


def read_index(out: Path) -> dict[int, dict]:
    """The rows an earlier run of the batch wrote, by index."""
    path = out / "index.jsonl"
    if not path.is_file():
        return {}
    try:
        return {row["index"]: row for row in map(json.loads, path.read_text().splitlines())}
    except (ValueError, KeyError, TypeError):
        raise BatchError(f"{path}: damaged; remove it and re-run (finished runs then redo only their "
                         "end-of-run renders)") from None


def write_index(out: Path, rows: dict[int, dict]) -> None:
    """index.jsonl (whole rows) and index.csv (the fields, then every scalar metric)."""
    ordered = [rows[i] for i in sorted(rows)]
    atomic_write(out / "index.jsonl", "".join(json.dumps(r) + "\n" for r in ordered))
    metric_keys = sorted({k for r in ordered for k, v in r["metrics"].items()
                          if not isinstance(v, (dict, list)) and k not in FIELDS})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*FIELDS, *metric_keys])
    for r in ordered:
        writer.writerow([*("" if r[k] is None else r[k] for k in FIELDS),
                         *(r["metrics"].get(k, "") for k in metric_keys)])
    atomic_write(out / "index.csv", buf.getvalue())


def new_row(job: Job, **values) -> dict:
    row = {k: None for k in FIELDS} | {"index": job.index, "prompt": job.prompt, "status": "pending",
                                       "attempts": 0, "metrics": {}}
    return row | values


def starting_rows(jobs: list[Job], old: dict[int, dict]) -> dict[int, dict]:
    """A row per job: an earlier run's row when it is final (ok with its run folder's metrics
    still there, or invalid) for the same prompt, else pending (invalid if its config is bad)."""
    rows = {}
    for job in jobs:
        prev = old.get(job.index)
        kept = prev is not None and prev["prompt"] == job.prompt and prev["status"] in FINAL and (
            prev["status"] == "invalid" or (Path(job.run) / "metrics.json").is_file())
        if kept:
            rows[job.index] = prev
        elif job.cfg is None:
            rows[job.index] = new_row(job, status="invalid", error=job.error)
        else:
            rows[job.index] = new_row(job)
    return rows


# --- one prompt, on a worker -----------------------------------------------------------------------

def one_line(e: BaseException) -> str:
    """The exception's message, first line; unexpected kinds are named."""
    text = next((s.strip() for s in str(e).splitlines() if s.strip()), "")
    known = isinstance(e, (*INVALID, PriorLoadError, ExportError, runs.RunError, runs.NonFiniteError, OSError))
    return text if known and text else f"{type(e).__name__}: {text}".rstrip(": ")


def fit_prompt(job: Job, cache: dict) -> dict:
    """Fit one prompt into its run folder, or resume it from the folder's last checkpoint;
    ``cache``: the worker's loaded priors. Returns its row's values (status, seconds, metrics,
    error); a failure fails this prompt alone."""
    start, row = time.time(), {"status": "failed", "resumed_from": 0}
    run = Path(job.run)
    try:
        cfg, ckpt = job.cfg, None
        if (run / runs.CKPT).is_file():
            cfg = runs.load_run_config(run)
            ckpt, row["resumed_from"] = runs.open_checkpoint(run)
        t, held = time.time(), set(cache)
        priors = runs.load_priors(cfg, cache)
        row["prior_seconds"] = round(time.time() - t, 2) if set(cache) - held else 0.0  # 0: kept loaded
        row["metrics"] = _fit(cfg, run, ckpt, priors, job.argv)
        row["status"] = "ok"
    except INVALID as e:
        row |= {"status": "invalid", "error": one_line(e)}
    except Exception as e:  # any fault fails this prompt alone; the traceback goes to the worker's log
        traceback.print_exc()
        row["error"] = one_line(e)
    return row | {"seconds": round(time.time() - start, 2), "run": run.name if run.is_dir() else None}


def _fit(cfg: C.RunConfig, run: Path, ckpt: Path | None, priors: dict, argv: tuple[str, ...]) -> dict:
    from threedgen.systems.fit import fit  # Lightning (2-3 s to import) only in the workers

    if ckpt is None:
        if run.exists():  # a run killed before its first checkpoint: start it afresh
            shutil.rmtree(run)
        try:
            run.mkdir()
        except OSError as e:
            raise runs.RunError(f"cannot create run folder {run} ({e.strerror})") from None
    with runs.removed_unless_checkpointed(run):
        if ckpt is None:
            runs.save_config(run, cfg, list(argv))
        return fit(cfg, run, ckpt, **priors)


class Worker:
    """A Ray actor (``ray.remote(Worker)``): fits prompts one after another, keeping the priors
    it loaded."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        self.priors: dict = {}

    def where(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def fit(self, job: Job) -> dict:
        return fit_prompt(job, self.priors)


# --- the driver ------------------------------------------------------------------------------------

def import_ray():
    try:
        import ray
    except ImportError:
        raise BatchError(INSTALL) from None
    return ray


UNITS = {"CPU": ("resources.cpus", 1, "CPU"), "GPU": ("resources.gpus", 1, "GPU"),
         "memory": ("resources.memory_gb", 2**30, "GiB of memory")}  # Ray resource: field, scale, words


def worker_options(res: C.ResourcesConfig, nodes: list[dict]) -> dict:
    """Ray actor options from the recipe's ``resources``; ``nodes``: each live node's Ray
    resources. A need that no node meets fails in one line (Ray would wait for it forever)."""
    gpus = res.gpus if res.gpus is not None else float(any(n.get("GPU", 0) >= 1 for n in nodes))
    options = {"num_cpus": res.cpus, "num_gpus": gpus}
    if res.memory_gb:
        options["memory"] = int(res.memory_gb * 2**30)
    for key, value in needs(options).items():
        most = max(n.get(key, 0) for n in nodes)
        if value > most:
            field, scale, words = UNITS[key]
            raise BatchError(f"{field}: a prompt needs {value / scale:g} {words}, the largest node of the Ray "
                             f"cluster has {most / scale:g}; lower it or add a larger node")
    return options


def needs(options: dict) -> dict:
    """The Ray resources a worker reserves, by Ray's names."""
    return {key: options.get(opt, 0) for key, opt in (("CPU", "num_cpus"), ("GPU", "num_gpus"), ("memory", "memory"))
            if options.get(opt)}


def workers_that_fit(options: dict, nodes: list[dict]) -> int:
    """How many workers the nodes hold side by side."""
    return max(1, sum(int(min(n.get(key, 0) // v for key, v in needs(options).items())) for n in nodes))


@dataclass
class Slot:
    """A worker of the pool; ``where`` (host:pid) once it has started."""

    actor: object
    where: str | None = None


class Pool:
    """Runs jobs on ``n`` workers: a started worker takes the next job; a worker that dies is
    replaced and its job queued again (first) while it has retries left."""

    def __init__(self, ray, spawn, n: int, retries: int, events):
        self.ray, self.spawn, self.retries, self.events = ray, spawn, retries, events
        self.queue, self.waiting, self.attempts, self.failed_starts = deque(), {}, Counter(), 0
        self.n = n

    def run(self, jobs: list[Job]) -> None:
        self.queue.extend(jobs)
        for _ in range(min(self.n, len(jobs))):
            self.start_worker()
        try:
            self.loop()
        finally:  # an error or Ctrl-C: stop the workers still fitting (their runs resume next time)
            for slot, _ in self.waiting.values():
                self.ray.kill(slot.actor)

    def loop(self) -> None:
        while self.waiting:
            (ref,), _ = self.ray.wait(list(self.waiting), num_returns=1)
            slot, job = self.waiting.pop(ref)
            try:
                value = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as e:
                self.died(job, e)
                continue
            except self.ray.exceptions.RayTaskError as e:  # the call itself failed (not the fit)
                value = {"status": "failed", "error": one_line(e)}
            if job is None:
                slot.where = value
            else:
                self.events.finished(job, value | {"attempts": self.attempts[job.index], "worker": slot.where})
            self.next_job(slot)

    def start_worker(self) -> None:
        slot = Slot(self.spawn())
        self.waiting[slot.actor.where.remote()] = (slot, None)

    def next_job(self, slot: Slot) -> None:
        if not self.queue:
            self.ray.kill(slot.actor)  # frees its CPUs / GPU for other work
            return
        job = self.queue.popleft()
        self.attempts[job.index] += 1
        self.waiting[slot.actor.fit.remote(job)] = (slot, job)
        self.events.started(job, slot.where, self.attempts[job.index])

    def died(self, job: Job | None, e: Exception) -> None:
        if job is None:  # before it started
            self.failed_starts += 1
            if self.failed_starts > self.retries:
                raise BatchError(f"workers die before they start ({one_line(e)})")
        elif self.attempts[job.index] <= self.retries:
            self.queue.appendleft(job)
            self.events.retrying(job, one_line(e))
        else:
            self.events.finished(job, {"status": "failed", "attempts": self.attempts[job.index], "error":
                                       f"its worker died {self.attempts[job.index]} times ({one_line(e)}); "
                                       "a re-run resumes it from its last checkpoint"})
        if self.queue:
            self.start_worker()


class Events:
    """Keeps the rows and the index files current, and prints one line per finished prompt under
    an overall progress bar with its ETA."""

    def __init__(self, out: Path, rows: dict[int, dict], todo: int):
        self.out, self.rows, self.todo, self.done, self.t0 = out, rows, todo, 0, time.time()
        self.before = len(rows) - todo  # kept from an earlier run, or invalid from the start
        self.bar = tqdm(total=len(rows), initial=len(rows) - todo, unit="prompt", file=sys.stderr,
                        disable=None, dynamic_ncols=True)

    def started(self, job: Job, where: str, attempt: int) -> None:
        self.update(job, status="running", worker=where, attempts=attempt, run=Path(job.run).name)

    def retrying(self, job: Job, why: str) -> None:
        self.update(job, status="pending")
        self.bar.write(f"[retry] {Path(job.run).name}: its worker died ({why}); resuming it from its last "
                       "checkpoint", file=sys.stdout)

    def finished(self, job: Job, values: dict) -> None:
        row = self.update(job, **values)
        self.done += 1
        self.bar.update(1)
        left = self.todo - self.done
        eta = f", {fmt_seconds((time.time() - self.t0) / self.done * left)} left" if left else ""
        resumed = f", resumed from step {row['resumed_from']}" if row.get("resumed_from") else ""
        what = f"{row['seconds']:.1f} s{resumed}" if row["status"] == "ok" else row["error"]
        self.bar.write(f"[{self.before + self.done}/{len(self.rows)}{eta}] {row['status']} {Path(job.run).name}: "
                       f"{what}", file=sys.stdout)

    def update(self, job: Job, **values) -> dict:
        self.rows[job.index] = self.rows[job.index] | values
        write_index(self.out, self.rows)
        return self.rows[job.index]


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


@contextlib.contextmanager
def connected(ray, address: str | None, cpus: int | None):
    """Ray, connected to ``address`` or to a new local cluster (``cpus``: its CPU count), and
    shut down at the end; a Ray already initialised in this process is used as it is."""
    if ray.is_initialized():
        yield
        return
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **kwargs)
    except Exception as e:  # ConnectionError, a timeout, a bad address: Ray's message, one line
        raise BatchError(f"cannot {'reach the Ray cluster at ' + address if address else 'start Ray'}: "
                         f"{one_line(e)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def run_on_ray(jobs: list[Job], events: Events, res: C.ResourcesConfig, address: str | None,
               workers: int | None, retries: int) -> None:
    """The jobs on Ray workers, each reserving ``res``."""
    ray = import_ray()
    local_cpus = max(os.cpu_count() or 1, int(-(-(workers or 1) * res.cpus // 1)))
    with connected(ray, address, local_cpus):
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        options = worker_options(res, nodes)
        actor = ray.remote(Worker).options(**options, max_restarts=0)
        spawn = lambda: actor.remote(max(1, int(res.cpus)))  # noqa: E731 (one torch thread a CPU)
        Pool(ray, spawn, workers or workers_that_fit(options, nodes), retries, events).run(jobs)


def default_out(cfg: C.RunConfig, prompts_file: Path) -> Path:
    return Path(cfg.output_dir) / cfg.name / f"batch-{runs.slug(Path(prompts_file).stem)}"


def run_batch(prompts_file: Path, configs: list[str], overrides: list[str], out: Path | None = None,
              address: str | None = None, workers: int | None = None, retries: int = 2,
              command: list[str] = ()) -> int:
    """Fit every prompt of ``prompts_file`` with the recipe (see the module docstring); 0 when
    every prompt is ok, else 1."""
    import_ray()  # installed, or one line saying how
    prompts = read_prompts(prompts_file)
    base = C.load(configs, [*overrides, "prompt=batch"])
    if base.init_from:
        raise BatchError("init_from: a batch fits each prompt from scratch; chain stages per run "
                         "with threedgen fit")
    out = (Path(out) if out else default_out(base, prompts_file)).resolve()
    jobs = make_jobs(prompts, configs, overrides, out)
    with locked(out):
        write_batch_json(out, {"prompts_file": str(Path(prompts_file).resolve()), "prompts": prompts,
                               "config": [str(c) for c in configs], "overrides": list(overrides),
                               "recipe": recipe(base), "resources": C.to_dict(base.resources),
                               "versions": versions(), "command": list(command)})
        rows = starting_rows(jobs, read_index(out))
        write_index(out, rows)
        todo = [j for j in jobs if rows[j.index]["status"] not in FINAL]
        events = Events(out, rows, len(todo))
        try:
            if todo:
                run_on_ray(todo, events, base.resources, address, workers, retries)
        finally:
            events.bar.close()
        if any(r["run"] for r in rows.values()):  # each fit wrote its report.html: link them all
            report.write_index(out, reports=False)
    return summary(out, rows, len(todo))


def summary(out: Path, rows: dict[int, dict], ran: int) -> int:
    counts = Counter(r["status"] for r in rows.values())
    parts = ", ".join(f"{counts[s]} {s}" for s in ("ok", "invalid", "failed", "pending") if counts[s])
    pages = f", {out / 'index.html'}" if (out / "index.html").is_file() else ""
    print(f"batch {out}: {parts} of {len(rows)} prompts ({ran} run now); index: {out / 'index.csv'}{pages}")
    return 0 if counts["ok"] == len(rows) else 1
