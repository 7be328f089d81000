"""Run folders: ``outputs/<config-name>/<prompt-slug>@<YYYYmmdd-HHMMSS>/``.

A run folder holds ``config.yaml`` (the resolved config), ``cmd.txt``, ``ckpts/last.ckpt``,
``val/`` PNGs, ``test/`` frames and ``turntable.mp4``, ``metrics.json`` and ``logs/``.
Nothing here imports Lightning: a checkpoint is read with ``torch.load``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import time
from pathlib import Path

import torch
import yaml

from threedgen import config as C

CONFIG_FILE, CKPT = "config.yaml", Path("ckpts") / "last.ckpt"


class RunError(RuntimeError):
    """A run folder that cannot be created or used; the message is one line."""


def slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60] or "prompt"


def create_run_dir(cfg: C.RunConfig) -> Path:
    """Make a fresh run folder (never reusing one) and check it is writable."""
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


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_config(run: Path, cfg: C.RunConfig, argv: list[str]) -> None:
    atomic_write(run / CONFIG_FILE, yaml.safe_dump(json.loads(json.dumps(C.to_dict(cfg))), sort_keys=False))
    atomic_write(run / "cmd.txt", shlex.join(argv) + "\n")  # replayable in a shell


def load_run_config(run: Path) -> C.RunConfig:
    if not (run / CONFIG_FILE).is_file():
        raise RunError(f"{run}: not a run folder (no {CONFIG_FILE})")
    return C.load([run / CONFIG_FILE])


def checkpoint_path(run: Path) -> Path:
    ckpt = run / CKPT
    if not ckpt.is_file():
        raise RunError(f"{run}: no checkpoint at {CKPT}; nothing to resume or evaluate")
    return ckpt


def load_representation(run: Path):
    """(config, representation with the run's last weights) from a run folder."""
    from threedgen.representations import build_representation

    cfg = load_run_config(run)
    state = torch.load(checkpoint_path(run), map_location="cpu", weights_only=False)["state_dict"]
    prefix = "representation."
    rep_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rep = build_representation(cfg.system.representation, seed=cfg.trainer.seed)
    rep.load_weights(rep_state)
    return cfg, rep.eval()
