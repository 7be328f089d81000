"""Run folders: ``outputs/<config-name>/<prompt-slug>@<YYYYmmdd-HHMMSS>/``.

A run folder holds ``config.yaml`` (the resolved config), ``cmd.txt``, ``ckpts/last.ckpt``,
``val/`` PNGs, ``test/`` frames and ``turntable.mp4``, ``metrics.json`` and ``logs/metrics.csv``.
Nothing here imports Lightning: a checkpoint is read with ``torch.load(weights_only=True)``, which
loads tensors and plain data and never runs code stored in the file.

Files are written atomically (a temporary ``.<name>.<pid>.<random>.tmp`` beside the file, then a
rename), with the mode the umask gives; a failed write removes its temporary file and raises a
one-line WriteError, so a file under its final name is always complete.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pickle
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from threedgen import config as C
from threedgen.export.views import write_video
from threedgen.files import RunError, atomic_write, remove_temporaries
from threedgen.prompts import image_prompt_for
from threedgen.registry import build_representation, load_prior, load_video_prior

CONFIG_FILE, CKPT = "config.yaml", Path("ckpts") / "last.ckpt"
# A multi-process (DDP) launch starts every process with the same command: they share the run
# folder named here. Lightning's own launcher (trainer.devices > 1) sets it for the processes it
# starts; under torchrun or srun set it yourself.
RUN_DIR_ENV = "THREEDGEN_RUN_DIR"


def slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60] or "prompt"


def create_run_dir(cfg: C.RunConfig) -> Path:
    """Make a fresh run folder (never reusing one) and check it is writable; with $THREEDGEN_RUN_DIR
    set, that folder (every process of a launch uses it), which must hold no checkpoint yet."""
    shared = os.environ.get(RUN_DIR_ENV)
    if shared:
        run = Path(shared)
        if (run / CKPT).exists():
            raise RunError(f"{run} (${RUN_DIR_ENV}) already holds a run; resume it with --resume {run}")
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"run folder {run} cannot be created ({e.strerror})") from None
        return run
    parent = Path(cfg.output_dir) / cfg.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for k in range(100):
            run = parent / f"{slug(cfg.prompt)}@{stamp}{'' if k == 0 else f'-{k}'}"
            try:
                run.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise RunError(f"{parent}: too many runs with the same timestamp")
        probe = run / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"output folder {parent} is not writable ({e.strerror})") from None
    return run


def save_config(run: Path, cfg: C.RunConfig, argv: list[str]) -> None:
    atomic_write(run / CONFIG_FILE, yaml.safe_dump(json.loads(json.dumps(C.to_dict(cfg))), sort_keys=False))
    atomic_write(run / "cmd.txt", shlex.join(argv) + "\n")  # replayable in a shell


def write_test_renders(test_dir: Path, frames: np.ndarray, fps: int) -> None:
    """frames [N, H, W, 3] uint8 -> test/NNN.png and test/turntable.mp4."""
    test_dir.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(test_dir / f"{i:03d}.png")
    write_video(test_dir / "turntable.mp4", frames, fps=fps)


def load_run_config(run: Path) -> C.RunConfig:
    if not (run / CONFIG_FILE).is_file():
        raise RunError(f"{run}: not a run folder (no {CONFIG_FILE})")
    return C.load([run / CONFIG_FILE])


def checkpoint_path(run: Path) -> Path:
    ckpt = run / CKPT
    if not ckpt.is_file():
        raise RunError(f"{run}: no checkpoint at {CKPT}; nothing to resume or evaluate")
    return ckpt


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, loaded safely (tensors and plain data only), with finite
    parameters; a damaged, foreign or diverged checkpoint raises a one-line RunError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        reason = "it holds more than tensors and plain data" if "Weights only load failed" in str(e) else "damaged"
        raise RunError(f"{path}: not a readable checkpoint ({reason}); it was not loaded. Fit the run "
                       "again, or put back a good copy of the file") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise RunError(f"{path}: not a threedgen checkpoint (no state_dict); fit the run again")
    bad = non_finite(ckpt["state_dict"].items())
    if bad:
        raise RunError(f"{path}: non-finite values (NaN or Inf) in {', '.join(bad)}; the run diverged. "
                       "Fit it again with a lower learning rate or guidance scale")
    return ckpt


def open_checkpoint(run: Path) -> tuple[Path, int]:
    """(checkpoint path, steps it holds) of a run to resume: a damaged, unsafe or diverged
    checkpoint raises a one-line RunError before anything loads; temporary files a killed write
    left are removed."""
    ckpt = checkpoint_path(run)
    step = int(read_checkpoint(ckpt)["state_dict"].get("step_count", 0))
    remove_temporaries(run)
    return ckpt, step


def load_priors(cfg: C.RunConfig, cache: dict | None = None) -> dict:
    """The run's priors by the system's argument names (``prior``; a 4D run's ``video_prior``),
    with its prompts checked against their vocabularies before anything heavy is built. cache:
    loaded priors by their config, kept between calls (a batch worker); priors this run does not
    use are dropped from it."""
    cache = {} if cache is None else cache
    video = cfg.system.video
    wanted = {"prior": (load_prior, cfg.system.prior)}
    if video is not None:
        wanted["video_prior"] = (load_video_prior, video.prior)
    keys = {name: f"{name}:{json.dumps(C.to_dict(pcfg), sort_keys=True)}" for name, (_, pcfg) in wanted.items()}
    for stale in set(cache) - set(keys.values()):
        del cache[stale]
    for name, (load, pcfg) in wanted.items():
        if keys[name] not in cache:
            cache[keys[name]] = load(pcfg)
    priors = {name: cache[key] for name, key in keys.items()}
    prior = priors["prior"]
    if video is not None:  # 4D: the prompt as the video prior reads it, and in the image prior's words
        priors["video_prior"].check_prompt(cfg.prompt)
        priors["video_prior"].check_prompt(cfg.negative_prompt)
        prior.check_prompt(video.image_prompt or image_prompt_for(cfg.prompt, prior.vocabulary))
    else:
        prior.check_prompt(cfg.prompt)
    prior.check_prompt(cfg.negative_prompt)
    return priors


@contextlib.contextmanager
def removed_unless_checkpointed(run: Path):
    """Around a fit: if it fails (also Ctrl-C) before its first checkpoint, remove the run folder,
    which could be neither resumed nor evaluated; a NonFiniteError says what the folder keeps."""
    try:
        yield
    except BaseException as e:
        kept = (run / CKPT).is_file()
        if not kept:
            shutil.rmtree(run)
        if isinstance(e, NonFiniteError):
            raise NonFiniteError(f"{e}; training stopped, " + (
                f"{run / CKPT} keeps the last finite state" if kept else "before its first checkpoint")) from None
        raise


def load_representation(run: Path):
    """(config, representation with the run's last weights) from a run folder."""
    cfg = load_run_config(run)
    ckpt = checkpoint_path(run)
    state = read_checkpoint(ckpt)["state_dict"]
    prefix = "representation."
    rep_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rep = build_representation(cfg.system.representation, seed=cfg.trainer.seed)
    try:
        rep.load_weights(rep_state)
    except RuntimeError:  # load_state_dict: missing, unexpected or mis-shaped tensors
        raise RunError(f"{ckpt}: its weights do not fit the run's {cfg.system.representation.name} "
                       "representation (config.yaml and the checkpoint disagree)") from None
    keep_fit_footprint(rep, cfg.system.camera)
    return cfg, rep.eval()


def keep_fit_footprint(rep, camera) -> None:
    """Gaussians rendered above the fit's size keep its pixel footprint, and their field (the
    mesh export) follows (``Gaussians.fit_resolution``, ``fit_pixel``: a pixel's width at the
    evaluation distance). ``camera``: the run's ``system.camera``."""
    if rep.has_splats:
        rep.fit_resolution = camera.resolution
        rep.fit_pixel = 2 * camera.eval_distance * math.tan(math.radians(camera.eval_fov_y) / 2) / camera.resolution


# --- divergence ----------------------------------------------------------------------------------

class NonFiniteError(RuntimeError):
    """Training produced a NaN or Inf; the message (one line) names the step and the tensor."""


def non_finite(named) -> list[str]:
    """Names of the floating-point tensors among (name, tensor) pairs holding a NaN or Inf."""
    tensors = [(k, v) for k, v in named if torch.is_tensor(v) and v.is_floating_point()]
    if not tensors or torch.stack([torch.isfinite(v).all() for _, v in tensors]).all():  # one sync
        return []
    return [k for k, v in tensors if not torch.isfinite(v).all()]


def check_finite(step: int, loss: torch.Tensor, module: torch.nn.Module) -> None:
    """Raise NonFiniteError if ``loss`` or a trainable parameter of ``module`` is NaN or Inf
    after training step ``step`` (1-based)."""
    bad = non_finite([("the loss", loss.detach())]) or non_finite(
        (k, p.detach()) for k, p in module.named_parameters() if p.requires_grad)
    if bad:
        raise NonFiniteError(f"step {step}: {', '.join(bad)} became non-finite (NaN or Inf)")


# --- the training log ----------------------------------------------------------------------------

class StepLog:
    """``logs/metrics.csv``: one row per training step, ``step`` (1-based) then its values,
    appended as each step ends. Opened for a run whose checkpoint holds ``done`` steps, it keeps
    the rows of steps 1..done and drops later ones (a resumed run runs those steps again) and a
    last row cut short by a kill, so every step appears exactly once."""

    def __init__(self, path: Path, done: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows, self.keys = self._read()
        self._rewrite([r for r in rows if int(r["step"]) <= done])

    def _read(self) -> tuple[list[dict], list[str]]:
        if not self.path.is_file():
            return [], ["step"]
        lines = self.path.read_text().splitlines(keepends=True)
        lines = [ln for ln in lines if ln.endswith("\n")]  # a row cut short by a kill has no newline
        reader = csv.DictReader(lines)
        return [r for r in reader if None not in r.values()], list(reader.fieldnames or ["step"])

    def _rewrite(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, buf.getvalue())

    def append(self, step: int, values: dict) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        new = [k for k in row if k not in self.keys]
        if new:  # a value first logged at this step (a scheduled term turning on): a wider header
            rows, _ = self._read()
            self.keys += new
            self._rewrite([*rows, row])
            return
        buf = io.StringIO()
        csv.DictWriter(buf, self.keys, lineterminator="\n").writerow(row)
        with open(self.path, "a") as f:  # one short write: a kill leaves whole rows or a cut last one
            f.write(buf.getvalue())
