"""``export(run_dir, formats, out, options)``: a run folder's assets in the formats asked for."""

from __future__ import annotations

from pathlib import Path

from threedgen.export.formats import ExportConfig, ExportError, Job
from threedgen.files import remove_temporaries
from threedgen.registry import FORMATS
from threedgen.runs import load_representation, load_run_config


def export(run: Path, formats: list[str], out: Path | None = None,
           opts: ExportConfig = ExportConfig(), representation=None) -> list[Path]:
    """Write ``formats`` of the run at ``run`` into ``out`` (default run/export) -> the files.
    ``representation``: the run's representation when the caller already holds it."""
    if not formats:
        raise ExportError(f"no format given (known: {', '.join(FORMATS)})")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r} (known: {', '.join(FORMATS)})")
    if representation is None:
        cfg, rep = load_representation(Path(run))
    else:
        cfg, rep = load_run_config(Path(run)), representation
    out = Path(out) if out else Path(run) / "export"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the output folder {out} ({e.strerror})") from None
    remove_temporaries(out)  # left by an export that was killed
    job = Job(cfg, rep.eval(), out, opts)
    files = [path for f in dict.fromkeys(formats) for path in FORMATS[f](job)]
    return list(dict.fromkeys(files))

