"""Export a finished run: ``export(run_dir, formats)``, also ``threedgen export RUN_DIR --format ...``.

FORMATS maps a format name to a function (run config, representation, output folder) -> the
files it wrote. Each file is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

from pathlib import Path


class ExportError(ValueError):
    """A run that cannot be exported in the asked format; the message is one line."""


def _splat(cfg, rep, out: Path) -> list[Path]:
    from threedgen.export.splat import write_splat_ply
    from threedgen.representations.gaussians import Gaussians

    if not isinstance(rep, Gaussians):
        raise ExportError(f"splat: a {cfg.system.representation.name} run has no Gaussians "
                          "(the splat format is for gaussians runs)")
    path = out / "splat.ply"
    write_splat_ply(rep, path)
    return [path]


FORMATS = {"splat": _splat}


def export(run: Path, formats: list[str], out: Path | None = None) -> list[Path]:
    """Write ``formats`` of the run at ``run`` into ``out`` (default run/export) -> the files."""
    from threedgen.runs import load_representation

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r} (known: {', '.join(FORMATS)})")
    cfg, rep = load_representation(Path(run))
    out = Path(out) if out else Path(run) / "export"
    out.mkdir(parents=True, exist_ok=True)
    return [path for f in formats for path in FORMATS[f](cfg, rep, out)]
