"""Progress bars for the slow phases outside the training loop (test renders, metrics, export,
the texture bake, check-prior), drawn on stderr with tqdm.

As Lightning's training bar, they show only when stderr is a terminal (tqdm's ``disable=None``):
logs, pipes and tests get no bar text. A bar disappears when its phase ends (``leave=False``), so
a finished command leaves only its own output.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator

from tqdm import tqdm


def bar(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr, off unless stderr is a terminal, removed when it closes."""
    return tqdm(iterable, disable=None, leave=False, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def ticking(progress: tqdm, every: float = 0.5) -> Iterator[tqdm]:
    """Redraw ``progress`` every ``every`` seconds while the block runs, so that its elapsed time
    moves during work that reports no steps of its own (an isosurface, a UV unwrap)."""
    if progress.disable:
        yield progress
        return
    done = threading.Event()

    def redraw():
        while not done.wait(every):
            progress.refresh()

    thread = threading.Thread(target=redraw, daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def phase(desc: str) -> Iterator[tqdm]:
    """One step of work with no steps inside (e.g. computing metrics): a bar showing ``desc`` and
    the time it has taken so far."""
    with bar(total=1, desc=desc, bar_format="{desc} [{elapsed}]") as progress, ticking(progress):
        yield progress
        progress.update(1)


@contextlib.contextmanager
def counting_renders(rep, desc: str, total: int | None = None) -> Iterator[tqdm]:
    """A bar counting the views ``rep.render`` draws while the block runs (the unit of work of
    the texture bake, the fidelity check, turntables and view sets, whose loops live in
    ``export.mesh`` and ``export.views``), out of ``total`` if known, with its elapsed time kept
    moving. The count is taken by wrapping the representation's ``render`` on
    this one object, only while the block runs and only when the bar shows."""
    with bar(desc=desc, total=total, unit=" views") as progress, ticking(progress):
        if progress.disable:
            yield progress
            return
        render = rep.render

        def counted(cameras, *args, **kwargs):
            out = render(cameras, *args, **kwargs)
            progress.update(len(cameras))
            return out

        rep.render = counted  # an instance attribute: it hides the method until deleted
        try:
            yield progress
        finally:
            del rep.render
