"""Metrics of a run, whatever its prior: ``evaluate_run(cfg, rep, background) -> dict``, used by
``threedgen eval`` and at the end of every fit (3D and 4D).

The embedded world's metrics (``threedgen.world.metrics``: classifier votes, IoU with the true
primitive, colour error, and for a 4D run the motion) apply when the prompt names a shape or a
colour of the world. Otherwise only what needs no reference object is measured (the silhouette's
coverage), and ``unavailable`` says which metrics were left out and why: never a zero.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from threedgen.cameras import orbit
from threedgen.world.classifier import load_world_classifier
from threedgen.world.metrics import evaluate, evaluate_4d, parse_prompt


@torch.no_grad()
def evaluate_run(cfg, rep, background: Tensor, n_views: int = 4) -> dict:
    """Metrics of representation ``rep`` of the run configured by ``cfg`` (its prompt, evaluation
    camera and 4D evaluation times), from ``n_views`` orbit views on ``background`` [3]."""
    c = cfg.system.camera
    view = dict(n_views=n_views, elevation=c.eval_elevation, distance=c.eval_distance, fov_y=c.eval_fov_y)
    if parse_prompt(cfg.prompt) == (None, None):
        return {**_coverage(rep, background, **view), "prompt": cfg.prompt, "unavailable": {
            "world": "the prompt names no shape or colour of the embedded world, so there is no "
                     "reference object for the classifier, IoU and colour metrics"}}
    classifier = load_world_classifier()
    if rep.dynamic:  # motion metrics and the shape at every time
        return evaluate_4d(rep, cfg.prompt, classifier, background, n_times=cfg.test.eval_times, **view)
    return evaluate(lambda cams: rep.render(cams, background), cfg.prompt, classifier, **view)


def _coverage(rep, background: Tensor, n_views: int, elevation: float, distance: float, fov_y: float) -> dict:
    """The mean alpha of the orbit views (a dynamic representation at time 0)."""
    cams = orbit(n_views, elevation, distance, fov_y, 64, start_azimuth=45.0)
    if rep.dynamic:
        cams = replace(cams, time=torch.zeros(n_views))
    return {"views": n_views, "coverage": rep.render(cams, background).alpha.mean().item()}
