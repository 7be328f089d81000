"""Run reports: ``RUN/report.html`` and an index of runs, for a browser, with nothing fetched
from the network (``threedgen report RUN`` or ``threedgen report OUTPUTS``; a fit writes its own
at the end).

A run's report shows the prompt, the config and command, the metrics, the training curves
(``report_files/curves.png``), the validation renders over time, the turntable videos, links to
every export and an interactive 3D view of the exported glb. The view is three.js (vendored with
its licence in ``static/``, rebuilt by ``js/build.sh``), copied into ``RUN/report_files/`` with
the glb as base64 in a script of its own: browsers load neither module scripts nor ``fetch()``
from ``file://``, and a report should open from disk.

An index (``OUTPUTS/index.html``) lists every run folder below a folder, with a thumbnail, the
prompt, the recipe and the key metrics, in a table sorted by clicking a column; it links each
run's report, which it writes first.
"""

from __future__ import annotations

import base64
from pathlib import Path

from threedgen.files import atomic_write
from threedgen.progress import bar
from threedgen.report.content import ReportError, RunContent, is_run, read_run
from threedgen.report.html import index_page, run_page
from threedgen.report.plots import curves_png

STATIC = Path(__file__).parent / "static"
FILES = "report_files"  # beside report.html in the run folder
VIEWER_FILES = ("viewer.min.js", "three.LICENSE.txt")

__all__ = ["ReportError", "find_runs", "report", "write_index", "write_report"]


def write_report(run: Path) -> Path:
    """Write ``run/report.html`` (and its files in ``run/report_files/``) -> its path."""
    c = read_run(run)
    files = c.run / FILES
    files.mkdir(exist_ok=True)
    curves = write_curves(c, files)
    viewer = write_viewer(c, files)
    path = c.run / "report.html"
    atomic_write(path, run_page(c, curves, viewer))
    return path


def write_curves(c: RunContent, files: Path) -> str | None:
    """report_files/curves.png from the training log -> its path in the run (None: no log)."""
    if len(c.log.get("step", [])) < 1 or len(c.log) < 2:
        return None
    atomic_write(files / "curves.png", curves_png(c.log))
    return f"{FILES}/curves.png"


def write_viewer(c: RunContent, files: Path) -> dict | None:
    """The 3D view's files: the vendored viewer and its licence, and the glb as a script
    (``window.THREEDGEN_GLB = "<base64>"``) -> the paths the page names (None: no glb)."""
    if c.glb is None:
        return None
    for name in VIEWER_FILES:
        atomic_write(files / name, (STATIC / name).read_bytes())
    data = files / "glb.js"
    glb = base64.b64encode((c.run / c.glb).read_bytes()).decode()
    atomic_write(data, f'window.THREEDGEN_GLB = "{glb}";\n')
    return {"glb": c.glb, "data": f"{FILES}/glb.js", "script": f"{FILES}/viewer.min.js"}


def find_runs(root: Path) -> list[Path]:
    """Every run folder (one with config.yaml) at or below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    runs = sorted(p.parent for p in root.rglob("config.yaml") if FILES not in p.parts)
    if not runs:
        raise ReportError(f"{root}: no run folders below it (a run folder holds config.yaml); "
                          "threedgen fit writes them under outputs/")
    return runs


def write_index(root: Path, reports: bool = True) -> Path:
    """Each run's report (unless ``reports`` is False: each fit wrote its own), then
    ``root/index.html`` listing them all -> the index's path."""
    root = Path(root)
    runs = find_runs(root)
    for run in bar(runs if reports else [], desc="reports", unit=" runs"):
        write_report(run)
    path = root / "index.html"
    atomic_write(path, index_page(root, [read_run(r) for r in runs]))
    return path


def report(path: Path) -> Path:
    """``threedgen report PATH``: a run folder's report, or the index of the runs below PATH."""
    path = Path(path)
    return write_report(path) if is_run(path) else write_index(path)
