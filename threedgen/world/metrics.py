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
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from skimage.measure import label
from torch import Tensor

from threedgen.cameras import Cameras, make_cameras, orbit
from threedgen.priors.base import prompt_words
from threedgen import world
from threedgen.render.types import RenderOutput

RenderFn = Callable[[Cameras], RenderOutput]


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """'a red cube' -> ('cube', 'red'), 'a blue ball bouncing' -> ('sphere', 'blue'); words that
    name no world shape or colour give None."""
    words = [world.SYNONYMS.get(w, w) for w in prompt_words(prompt)]
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
    alpha = render_fn(cams).alpha[0, 0].detach().cpu()
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
             elevation: float = 20.0, distance: float = 2.8, fov_y: float = 30.0,
             pose: Tensor | None = None) -> dict:
    """Metrics for an object rendered by ``render_fn`` from an orbit of ``n_views`` views;
    ``pose`` [5] moves the true objects (``world.motion_pose``'s layout)."""
    shape, colour = parse_prompt(prompt)
    cams = orbit(n_views, elevation, distance, fov_y, size, start_azimuth=45.0)
    out = render_fn(cams)
    rgb, alpha = out.rgb.detach().clamp(0, 1).cpu(), out.alpha.detach().cpu()  # metrics on the CPU
    shapes, colours = classifier.predict(rgb)
    result: dict = {"prompt": prompt, "views": n_views,
                    "shape_votes": dict(Counter(shapes)), "colour_votes": dict(Counter(colours)),
                    "coverage": alpha.mean().item()}
    truth = {}
    for s in world.SHAPES:
        truth[s] = world.render([s] * n_views, [colour or "red"] * n_views, cams,
                                poses=None if pose is None else pose.expand(n_views, 5))
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


# --- 4D: motion ----------------------------------------------------------------------------------
def motion_track(rep, times: Tensor) -> dict[str, np.ndarray]:
    """How a dynamic representation moves, from its Gaussians at ``times`` [K] against its
    canonical ones (opacity-weighted): "offset" [K, 3] of the centroid, "angle" [K] rotation about
    the vertical axis in degrees (2D Procrustes of the centred xy positions, unwrapped), "scale" [K]
    RMS radius ratio."""
    def stats(g):
        w = g.opacities.detach().cpu()[:, None]
        x = g.means.detach().cpu()
        c = (w * x).sum(0) / w.sum()
        return x - c, w, c

    x0, w, c0 = stats(rep)
    r0 = (w * x0.square().sum(-1, keepdim=True)).sum().sqrt()
    offset, angle, scale = [], [], []
    for t in times.tolist():
        x, wt, c = stats(rep.at_time(t))
        offset.append((c - c0).numpy())
        cross = (wt[:, 0] * (x0[:, 0] * x[:, 1] - x0[:, 1] * x[:, 0])).sum()
        dot = (wt[:, 0] * (x0[:, 0] * x[:, 0] + x0[:, 1] * x[:, 1])).sum()
        angle.append(float(torch.atan2(cross, dot)))
        scale.append(float((wt * x.square().sum(-1, keepdim=True)).sum().sqrt() / r0))
    return {"offset": np.stack(offset), "angle": np.degrees(np.unwrap(np.array(angle))), "scale": np.array(scale)}


def motion_curve(track: dict, motion: str) -> np.ndarray:
    """The 1D curve of a track that a motion drives: vertical offset (bouncing), rotation angle
    (spinning), scale (pulsing), or for sliding the horizontal offset along its main direction
    (the world slides along y, across the screen of the video prior's cameras; a video model
    filming from elsewhere, or unsure of the camera, may slide the object along another horizontal
    direction)."""
    if motion == "bouncing":
        return track["offset"][:, 2]
    if motion == "spinning":
        return track["angle"]
    if motion == "pulsing":
        return track["scale"]
    xy = track["offset"][:, :2] - track["offset"][:, :2].mean(0)
    return xy @ np.linalg.svd(xy, full_matrices=False)[2][0]


def motion_correlation(track: dict, motion: str, shape: str, times: Tensor,
                       shifts: int = 64) -> tuple[float, float, float]:
    """(best Pearson correlation, its phase, amplitude ratio): the recovered motion curve against
    the true one (``world.motion_pose``) at times + phase, over ``shifts`` phases in [0, 1) (clips
    of the video prior start at any phase; a slide's sign is a phase of 1/2; a steady spin's phase
    only offsets its angle, which the correlation ignores). The amplitude ratio
    std(recovered) / std(true) tells a real motion from a faint wobble of the right shape."""
    curve = motion_curve(track, motion)
    channel = {"bouncing": 2, "sliding": 1, "spinning": 3, "pulsing": 4}[motion]
    best = (-1.0, 0.0, 0.0)
    phases = [0.0] if motion == "spinning" else np.arange(shifts) / shifts  # a spin's phase: an offset
    for phase in phases:
        truth = world.motion_pose(motion, shape, times + float(phase))[:, channel].numpy()
        if curve.std() < 1e-8 or truth.std() < 1e-8:
            continue
        r = float(np.corrcoef(curve, truth)[0, 1])
        if r > best[0]:
            best = (r, float(phase), float(curve.std() / truth.std()))
    return best


def motion_amount(track: dict) -> dict[str, float]:
    """How much the object moves over the times: the largest centroid displacement (world units),
    rotation (degrees) and relative scale change from its mean pose over those times. About the
    mean, not the canonical pose: an offset the same at every time (a root motion's constant
    term: the canonical frame is a free choice) moves nothing."""
    offset = track["offset"] - track["offset"].mean(0)
    return {"displacement": float(np.linalg.norm(offset, axis=-1).max()),
            "rotation": float(np.abs(track["angle"] - track["angle"].mean()).max()),
            "scale_change": float(np.abs(track["scale"] / track["scale"].mean() - 1).max())}


def parse_motion(prompt: str) -> str | None:
    return next((w for w in prompt_words(prompt) if w in world.MOTIONS), None)


@torch.no_grad()
def evaluate_4d(rep, prompt: str, classifier, background: Tensor, n_times: int = 8, n_views: int = 4,
                elevation: float = 20.0, distance: float = 2.8, fov_y: float = 30.0) -> dict:
    """Metrics of a dynamic representation: the motion (phase-free correlation with the prompt's
    motion curve, or for a still prompt how much it moves anyway), and at each of ``n_times``
    times the static metrics (``evaluate``) against the true object moved by the pose measured
    at that time, so that they judge the shape and colour, not the motion."""
    shape, _ = parse_prompt(prompt)
    motion = parse_motion(prompt)
    times = torch.arange(n_times, dtype=torch.float32) / n_times
    track = motion_track(rep, times)
    result: dict = {"prompt": prompt, "motion": motion, "times": n_times, "motion_amount": motion_amount(track)}
    if motion is not None and shape is not None:
        r, phase, amplitude = motion_correlation(track, motion, shape, times)
        result.update(motion_correlation=r, motion_phase=phase, motion_amplitude=amplitude)
    per_time = []
    for k, t in enumerate(times.tolist()):
        pose = torch.tensor([*track["offset"][k], track["angle"][k], track["scale"][k]], dtype=torch.float32)

        def render_fn(cams, t=t):
            return rep.render(replace(cams, time=torch.full((len(cams),), t)), background)

        per_time.append(evaluate(render_fn, prompt, classifier, n_views=n_views, elevation=elevation,
                                 distance=distance, fov_y=fov_y, pose=pose))
    result["per_time"] = [{k: m.get(k) for k in ("shape_correct_views", "colour_correct_views", "iou", "best_shape_by_iou")}
                          for m in per_time]
    for key in ("shape_correct_views", "colour_correct_views", "iou"):
        values = [m[key] for m in per_time if key in m]
        if values:
            result[f"min_{key}"] = min(values)
    return result
