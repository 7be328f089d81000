"""The ground floor: schedulable hyper-parameters, the config error, and value checks that
every layer's configs share. Imports nothing of the project."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union


class ConfigError(ValueError):
    """A config problem, reported as one line: '<dotted.path>: <what is wrong>'."""


# --- schedules ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ramp:
    """Linear ramp from ``start`` (at step ``begin``) to ``end`` (at step ``until``), constant outside.

    YAML: ``t_max: {start: 0.98, end: 0.5, until: 500}``.
    """

    start: float
    end: float
    until: int
    begin: int = 0

    def __post_init__(self):
        if self.until <= self.begin:
            raise ValueError(f"until ({self.until}) must be greater than begin ({self.begin})")

    def at(self, step: int) -> float:
        f = min(max((step - self.begin) / (self.until - self.begin), 0.0), 1.0)
        return self.start + f * (self.end - self.start)


Scheduled = Union[float, Ramp]


def value_at(v: Scheduled, step: int) -> float:
    """A plain number or a Ramp, evaluated at a training step."""
    return v.at(step) if isinstance(v, Ramp) else float(v)


def weighted_terms(step: int, terms: dict[str, tuple[Scheduled, Callable[[], Any]]]) -> dict[str, Any]:
    """{name: weight * loss()} for each (weight, loss) whose scheduled weight is non-zero at
    ``step``; a loss is only computed when its weight is."""
    weights = {k: value_at(w, step) for k, (w, _) in terms.items()}
    return {k: weights[k] * loss() for k, (_, loss) in terms.items() if weights[k] > 0}


# --- ranges ------------------------------------------------------------------------------------

MAX_IMAGE_SIZE = 4096  # pixels per side of any rendered image


def check_image_size(name: str, size: int, count: int) -> None:
    """``count`` images of ``size`` x ``size`` pixels: at least 8 and at most MAX_IMAGE_SIZE per
    side; a too large size is refused with the memory its colours alone would take."""
    if size < 8:
        raise ValueError(f"{name}: must be at least 8 pixels, got {size}")
    if size > MAX_IMAGE_SIZE:
        gib = count * size * size * 3 * 4 / 2**30  # float32 RGB
        raise ValueError(f"{name}: {size} is too large ({count} image(s) of {size}x{size} need about "
                         f"{gib:,.0f} GiB for their colours alone; at most {MAX_IMAGE_SIZE})")


def check_at_least(obj, low: int, *names: str) -> None:
    """Each field ``names`` of ``obj`` is an integer >= ``low``."""
    for name in names:
        if getattr(obj, name) < low:
            raise ValueError(f"{name}: must be at least {low}, got {getattr(obj, name)}")
