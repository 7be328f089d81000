"""Fidelity metrics against the embedded world (see DESIGN.md, "Measuring quality").

From fixed orbit views of an optimised object:
- the world classifier's shape and colour votes (R-precision's stand-in);
- silhouette IoU with the true primitive from the same cameras, and with every other primitive
  (a negative control: the prompted one must score best);
- mean colour error inside the mask;
- for the mug, a Janus indicator: the number of handles seen from above.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import torch
from skimage.measure import label
from torch import Tensor

from threedgen.cameras import Cameras, make_cameras, orbit
from threedgen.priors.embedded import world
from threedgen.render.types import RenderOutput

RenderFn = Callable[[Cameras], RenderOutput]


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """'a red cube' -> ('cube', 'red'); words that name no world shape or colour give None."""
    words = prompt.lower().split()
    shape = next((w for w in words if w in world.SHAPES), None)
    colour = next((w for w in words if w in world.COLOURS), None)
    return shape, colour


def iou(a: Tensor, b: Tensor, threshold: float = 0.5) -> float:
    """Silhouette IoU of two alpha stacks [V, 1, H, W] thresholded at ``threshold``."""
    a, b = a > threshold, b > threshold
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def count_handles(render_fn: RenderFn, size: int = 64, distance: float = 2.8,
                  min_pixels: int = 4) -> int:
    """Connected pieces of silhouette outside the mug's body, seen from straight above.

    A true mug has one; a Janus mug two or more; a plain cylinder none. Pixels are mapped to the
    z = 0.45 plane (the mug's rim) and kept where 0.53 < r < 0.95 (body radius 0.45, handle
    reaching to 0.76).
    """
    cams = make_cameras(89.9, 0.0, distance, 30.0, size)
    alpha = render_fn(cams).alpha[0, 0].detach()
    origins, dirs = cams.rays()
    s = (0.45 - origins[0, ..., 2]) / dirs[0, ..., 2]
    xy = origins[0, ..., :2] + s[..., None] * dirs[0, ..., :2]
    r = xy.norm(dim=-1)
    ring = ((alpha > 0.5) & (r > 0.53) & (r < 0.95)).numpy()
    labels = label(ring, connectivity=2)
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_pixels).sum())


@torch.no_grad()
def evaluate(render_fn: RenderFn, prompt: str, classifier, n_views: int = 4, size: int = 64,
             elevation: float = 20.0, distance: float = 2.8, fov_y: float = 30.0) -> dict:
    """Metrics for an object rendered by ``render_fn`` from an orbit of ``n_views`` views."""
    shape, colour = parse_prompt(prompt)
    cams = orbit(n_views, elevation, distance, fov_y, size, start_azimuth=45.0)
    out = render_fn(cams)
    rgb, alpha = out.rgb.detach().clamp(0, 1), out.alpha.detach()
    shapes, colours = classifier.predict(rgb)
    result: dict = {"prompt": prompt, "views": n_views,
                    "shape_votes": dict(Counter(shapes)), "colour_votes": dict(Counter(colours)),
                    "coverage": alpha.mean().item()}
    truth = {}
    for s in world.SHAPES:
        truth[s] = world.render([s] * n_views, [colour or "red"] * n_views, cams)
    result["iou_by_shape"] = {s: round(iou(alpha, t.alpha), 4) for s, t in truth.items()}
    result["best_shape_by_iou"] = max(result["iou_by_shape"], key=result["iou_by_shape"].get)
    if shape is not None:
        result["shape"] = shape
        result["shape_correct_views"] = shapes.count(shape)
        result["iou"] = result["iou_by_shape"][shape]
    if colour is not None:
        result["colour"] = colour
        result["colour_correct_views"] = colours.count(colour)
    if shape is not None and colour is not None:
        t = truth[shape]
        mask = (alpha > 0.5) & (t.alpha > 0.5)
        err = (rgb - t.rgb).abs().mean(1, keepdim=True)[mask]
        result["colour_error"] = err.mean().item() if err.numel() else 1.0
    if shape == "mug":
        result["handles"] = count_handles(render_fn, distance=distance)
    return result


def passes(metrics: dict, min_views: int = 3, min_iou: float = 0.75) -> bool:
    """The acceptance rule used by the sweeps: shape and colour right from >= min_views views,
    IoU >= min_iou, and the prompted shape's IoU beats every other shape's."""
    return (metrics.get("shape_correct_views", 0) >= min_views
            and metrics.get("colour_correct_views", 0) >= min_views
            and metrics.get("iou", 0.0) >= min_iou
            and metrics.get("best_shape_by_iou") == metrics.get("shape"))
