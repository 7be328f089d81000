"""What a run folder holds, read for its report: the prompt and config, metrics, the training
log, validation images, videos and exports. Reading changes nothing in the folder.

A run that has not finished (no metrics.json yet) still has a report of what it holds; a file
that exists but cannot be read (config.yaml that is not YAML, metrics.json that is not JSON) is a
one-line ReportError naming it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml


class ReportError(ValueError):
    """A path that holds no run, or a run file that cannot be read; the message is one line."""


@dataclass
class RunContent:
    """A run folder's contents. Paths are relative to the run folder, with forward slashes."""

    run: Path
    config: dict
    config_text: str
    command: str | None
    metrics: dict | None  # None: the run has not finished
    log: dict[str, list[float]]  # logs/metrics.csv by column, "step" first; {} when there is none
    val_images: list[tuple[int, str, int]]  # (step, path, width), by step
    videos: list[str]  # .mp4: the run's own (test/), then exported ones
    gifs: list[str]
    exports: list[tuple[str, int]]  # (path, bytes) of every file under export/
    glb: str | None  # the mesh the 3D view shows

    @property
    def prompt(self) -> str:
        return str(self.config.get("prompt", ""))

    @property
    def recipe(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def representation(self) -> str:
        return str(self.config.get("system", {}).get("representation", {}).get("name", ""))

    @property
    def guidance(self) -> str:
        return str(self.config.get("system", {}).get("guidance", {}).get("name", ""))

    @property
    def max_steps(self) -> int | None:
        return self.config.get("trainer", {}).get("max_steps")

    @property
    def thumbnail(self) -> str | None:
        """The first test frame, or the last validation image."""
        if (self.run / "test" / "000.png").is_file():
            return "test/000.png"
        return self.val_images[-1][1] if self.val_images else None


def is_run(path: Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def read_run(run: Path) -> RunContent:
    run = Path(run)
    if not run.is_dir():
        raise ReportError(f"{run}: no such folder")
    if not is_run(run):
        raise ReportError(f"{run}: not a run folder (no config.yaml)")
    config_text = (run / "config.yaml").read_text()
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as e:
        raise ReportError(f"{run / 'config.yaml'}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{run / 'config.yaml'}: not a run config (a YAML mapping)")
    command = (run / "cmd.txt").read_text().strip() if (run / "cmd.txt").is_file() else None
    exports = files_under(run, "export")
    return RunContent(run, config, config_text, command, read_metrics(run), read_log(run / "logs" / "metrics.csv"),
                      val_images(run), videos(run), [p for p, _ in exports if p.endswith(".gif")], exports,
                      pick_glb([p for p, _ in exports]))


def read_metrics(run: Path) -> dict | None:
    path = run / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(metrics, dict):
        raise ReportError(f"{path}: not a metrics file (a JSON object)")
    return metrics


def read_log(path: Path) -> dict[str, list[float]]:
    """The training log by column; a value a row lacks (logged from a later step on) is NaN, and
    a last row cut short by a kill (no newline) is left out, as StepLog leaves it."""
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines(keepends=True) if ln.endswith("\n")]
    reader = csv.DictReader(lines)
    columns = {k: [] for k in reader.fieldnames or []}
    for n, row in enumerate(reader, 2):
        for k in columns:
            try:
                columns[k].append(float(row[k]) if row[k] not in (None, "") else math.nan)
            except ValueError:
                raise ReportError(f"{path}: line {n}: {k} is not a number ({row[k]!r})") from None
    return columns if "step" in columns else {}


def val_images(run: Path) -> list[tuple[int, str, int]]:
    """(step, path, width in pixels) of each validation image, by step."""
    found = (re.fullmatch(r"step(\d+)\.png", p.name) for p in (run / "val").glob("step*.png"))
    steps = sorted((int(m.group(1)), f"val/{m.group(0)}") for m in found if m)
    return [(s, p, image_width(run / p)) for s, p in steps]


def image_width(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.width
    except OSError:  # PIL's UnidentifiedImageError too
        raise ReportError(f"{path}: not a readable image") from None


def videos(run: Path) -> list[str]:
    return [p.relative_to(run).as_posix() for folder in ("test", "export") for p in sorted((run / folder).glob("*.mp4"))
            if not p.name.startswith(".")]


def files_under(run: Path, folder: str) -> list[tuple[str, int]]:
    """(path, bytes) of every file below run/folder but temporary ones (a leading dot)."""
    return [(p.relative_to(run).as_posix(), p.stat().st_size) for p in sorted((run / folder).rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)]


def pick_glb(paths: list[str]) -> str | None:
    """The glb the 3D view shows: export/mesh.glb, else a glb that is not one frame of a 4D
    sequence (``mesh_000.glb``, ...), else the sequence's first frame."""
    glbs = [p for p in paths if p.endswith(".glb") and p.count("/") == 1]
    whole = [p for p in glbs if not re.search(r"_\d{3}\.glb$", p)]
    if "export/mesh.glb" in glbs:
        return "export/mesh.glb"
    return (whole or glbs or [None])[0]
