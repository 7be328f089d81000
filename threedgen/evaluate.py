"""Metrics of a run, whatever its prior: ``evaluate_run(cfg, rep, background) -> dict``, used by
``threedgen eval`` and at the end of every fit (3D and 4D).

- The embedded world's metrics (``threedgen.world.metrics``: classifier votes, IoU with the true
  primitive, colour error, and for a 4D run the motion) apply to a run on the embedded prior whose
  prompt names a shape or a colour of the world. Any other run gets only what needs no reference
  object (the silhouette's coverage), and never loads the world classifier.
- CLIP metrics (``threedgen.priors.clip``: CLIP score, CLIP R-precision against a prompt pool)
  apply whenever the run's ``eval`` section names a CLIP model (``EvalConfig``): by default the
  embedded world's CLIP for a run on the embedded prior, none for other priors.

``unavailable`` names each metric group left out and why: never a zero. ``metrics_table`` lays
out the metrics of several runs as one table.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import replace

import torch
from torch import Tensor

from threedgen.cameras import orbit
from threedgen.priors.base import PriorLoadError
from threedgen.priors.clip import PROMPT_POOL, load_clip, read_prompt_pool
from threedgen.schedules import ConfigError
from threedgen.world.classifier import load_world_classifier
from threedgen.world.clip import world_prompts
from threedgen.world.metrics import evaluate, evaluate_4d, parse_prompt

EMBEDDED_PRIORS = ("embedded", "embedded_video")


@torch.no_grad()
def evaluate_run(cfg, rep, background: Tensor, n_views: int = 4) -> dict:
    """Metrics of representation ``rep`` of the run configured by ``cfg`` (its prompt, prior,
    evaluation camera, 4D evaluation times and ``eval`` section): the world's from ``n_views``
    orbit views, CLIP's from ``cfg.eval.views``, on ``background`` [3]."""
    result, unavailable = _world_metrics(cfg, rep, background, n_views)
    clip, reason = clip_metrics(cfg, rep, background)
    result.update(clip)
    if reason:
        unavailable["clip"] = reason
    if unavailable:
        result["unavailable"] = unavailable
    return result


def _world_metrics(cfg, rep, background: Tensor, n_views: int) -> tuple[dict, dict]:
    """(the world's metrics, or the coverage alone; {"world": why not} when left out)."""
    c = cfg.system.camera
    view = dict(n_views=n_views, elevation=c.eval_elevation, distance=c.eval_distance, fov_y=c.eval_fov_y)
    if cfg.system.prior.name not in EMBEDDED_PRIORS:
        why = (f"the run's prior ({cfg.system.prior.name}) is not the embedded world's, so the world's "
               "classifier, IoU and colour metrics have no reference object")
    elif parse_prompt(cfg.prompt) == (None, None):
        why = ("the prompt names no shape or colour of the embedded world, so there is no "
               "reference object for the classifier, IoU and colour metrics")
    else:
        classifier = load_world_classifier()
        if rep.dynamic:  # motion metrics and the shape at every time
            return evaluate_4d(rep, cfg.prompt, classifier, background, n_times=cfg.test.eval_times, **view), {}
        return evaluate(lambda cams: rep.render(cams, background), cfg.prompt, classifier, **view), {}
    return {"prompt": cfg.prompt, **_coverage(rep, background, **view)}, {"world": why}


def _coverage(rep, background: Tensor, n_views: int, elevation: float, distance: float, fov_y: float) -> dict:
    """The mean alpha of the orbit views (a dynamic representation at time 0)."""
    cams = orbit(n_views, elevation, distance, fov_y, 64, start_azimuth=45.0)
    if rep.dynamic:
        cams = replace(cams, time=torch.zeros(n_views))
    return {"views": n_views, "coverage": rep.render(cams, background).alpha.mean().item()}


# --- CLIP ---------------------------------------------------------------------------------------
def clip_model_name(cfg) -> str | None:
    """The CLIP model a run is evaluated with (``eval.clip_model``, "auto" resolved), or None."""
    name = cfg.eval.clip_model
    if name == "auto":
        return "embedded" if cfg.system.prior.name in EMBEDDED_PRIORS else None
    return name


def prompt_pool(cfg, clip_name: str) -> list[str]:
    """The run's distractor prompts: ``eval.prompt_pool``'s file, else the world's 36 prompts for
    the embedded CLIP, else the shipped pool."""
    if cfg.eval.prompt_pool:
        return read_prompt_pool(cfg.eval.prompt_pool)
    return world_prompts() if clip_name == "embedded" else read_prompt_pool(PROMPT_POOL)


def clip_metrics(cfg, rep, background: Tensor) -> tuple[dict, str | None]:
    """({clip_model, clip_views, clip_score, clip_r_precision, clip_rank, clip_pool}, None) from
    ``cfg.eval.views`` orbit views at the CLIP's image size (a dynamic representation: view k at
    time k / views), or ({}, why they cannot be computed): no model configured, a model that
    cannot be loaded, an unreadable pool, a prompt the model cannot read."""
    name = clip_model_name(cfg)
    if name is None:
        return {}, (f"no CLIP model is configured for a run on the {cfg.system.prior.name} prior: set "
                    "eval.clip_model to a hub id (e.g. openai/clip-vit-base-patch32) or a local folder")
    try:
        clip = load_clip(name)
        pool = prompt_pool(cfg, name)
    except (PriorLoadError, ConfigError) as e:
        return {}, str(e)
    why = clip.unreadable(cfg.prompt)
    if why:
        return {}, why
    c, n = cfg.system.camera, cfg.eval.views
    cams = orbit(n, c.eval_elevation, c.eval_distance, c.eval_fov_y, clip.image_size)
    if rep.dynamic:
        cams = replace(cams, time=torch.arange(n, dtype=torch.float32) / n)
    rgb = rep.render(cams, background).rgb
    return {"clip_model": name, "clip_views": n, **clip.metrics(rgb, cfg.prompt, pool)}, None


# --- tables of several runs ---------------------------------------------------------------------
def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics -> {dotted key: number or text}; lists (a 4D run's per-time details, whose
    extremes are metrics of their own) and ``unavailable`` (reported apart) are left out."""
    flat = {}
    for k, v in metrics.items():
        if k == "unavailable" or isinstance(v, list):
            continue
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def metrics_table(rows: list[dict], fmt: str = "markdown") -> str:
    """One table of several runs' metrics ({"run": folder, **evaluate_run's dict} each): a row a
    run, a column for every metric any run has ("-" where a run has none), and the runs' unavailable
    metric groups; ``fmt`` "markdown" (the reasons as notes under the table) or "csv" (the
    reasons in the "unavailable" column)."""
    flat = [flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for f in flat for k in f))
    notes = {(k, why): None for r in rows for k, why in r.get("unavailable", {}).items()}
    groups = [", ".join(r.get("unavailable", {})) for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*columns, "unavailable"])
        for f, r in zip(flat, rows):
            writer.writerow([*(_cell(f.get(k)) for k in columns),
                             "; ".join(f"{k}: {why}" for k, why in r.get("unavailable", {}).items())])
        return out.getvalue()
    header = [*columns, "unavailable"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([*(_cell(f.get(k)).replace("|", "\\|") for k in columns), g or "-"]) + " |"
              for f, g in zip(flat, groups)]
    lines += [""] + [f"- {k} unavailable: {why}" for k, why in notes] if notes else []
    return "\n".join(lines) + "\n"
