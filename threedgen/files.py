"""Files written atomically: a temporary file beside the target, then a rename, so that a killed
process or a full disk never leaves a half-written checkpoint, config or export."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


class RunError(RuntimeError):
    """A run folder that cannot be created or used; the message is one line."""


class WriteError(RunError):
    """A file that could not be written (a full disk, a read-only folder); the message is one line."""


@contextlib.contextmanager
def atomic_target(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write, ending in ``suffix`` (for writers that read the
    format from the name); renamed over ``path`` when the block ends.
    An OSError (a full disk, a read-only folder) removes the temporary file, leaves ``path`` as
    it was and becomes a one-line WriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path} ({e.strerror or e}); {path.name} is left as it was") from None


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_target(path) as tmp, open(tmp, "xb") as f:  # "x": mode 0666 less the umask
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files an interrupted write left under ``folder``."""
    for tmp in Path(folder).rglob(".*.tmp*"):
        tmp.unlink()
