"""Training curves as a PNG (matplotlib's object API with the Agg canvas: no pyplot state, no
display needed)."""

from __future__ import annotations

import io
import math

import numpy as np

COLUMNS = 3


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average (TensorBoard's smoothing), debiased, skipping NaNs."""
    out, avg, n = np.full_like(values, np.nan), 0.0, 0
    for i, v in enumerate(values):
        if math.isfinite(v):
            avg, n = weight * avg + (1 - weight) * v, n + 1
            out[i] = avg / (1 - weight ** n)
    return out


def curves_png(log: dict[str, list[float]], dpi: int = 100) -> bytes:
    """One small plot per logged value against the step: the raw values, faint, under their
    moving average. A value spanning over two decades, all positive, gets a log axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    step = np.asarray(log["step"])
    names = [k for k in log if k != "step"]
    rows = max(1, math.ceil(len(names) / COLUMNS))
    fig = Figure(figsize=(10, 2.3 * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, COLUMNS, k + 1)
        values = np.asarray(log[name], dtype=float)
        ax.plot(step, values, color="#1f77b4", alpha=0.25, linewidth=0.8)
        ax.plot(step, smooth(values, 0.9 if len(values) > 50 else 0.0), color="#1f77b4", linewidth=1.4)
        finite = values[np.isfinite(values)]
        if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 100:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if k >= len(names) - COLUMNS:
            ax.set_xlabel("step", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
