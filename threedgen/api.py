"""The Python API: fit a prompt into a run folder, then export and evaluate it. The CLI's ``fit``
and ``eval`` go through the same functions (``fit_config``, ``Run.evaluate``) and its ``export``
through the same ``export``, so both check the same things and fail with the same one-line errors.

    import threedgen
    run = threedgen.fit("a red cube", trainer__max_steps=200)  # config="gaussians-sds"
    print(run.path, run.metrics["iou"])
    run.export(["glb", "mp4"], texture_size=512)               # -> the files written
    threedgen.Run.open(run.path).evaluate(views=8)             # a finished run, later

Overrides are the CLI's ``key=value`` pairs with ``__`` for each dot and Python values:
``trainer__max_steps=200`` is ``trainer.max_steps=200``, ``test__export=["glb", "splat"]`` is
``test.export=[glb,splat]``. Bad input raises the exception the CLI prints as its one line:
``ConfigError``, ``PromptError``, ``PriorLoadError``, ``RunError`` (``WriteError``,
``NonFiniteError`` for faults during a run) or ``ExportError``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from threedgen import config as C
from threedgen import runs
from threedgen.config import recipes
from threedgen.evaluate import clip_model_name, evaluate_run, prompt_pool
from threedgen.export.formats import ExportConfig, ExportError
from threedgen.export.run import export
from threedgen.files import RunError
from threedgen.priors.base import PriorLoadError, PromptError
from threedgen.priors.clip import load_clip
from threedgen.registry import conversion
from threedgen.schedules import ConfigError

# threedgen/__init__.py exports fit, Run and these from here.
_REEXPORTED = (recipes, ConfigError, ExportError, RunError, PriorLoadError, PromptError)


def dotted(values: dict) -> list[str]:
    """``{"trainer__max_steps": 200}`` -> ``["trainer.max_steps=200"]``: each value written as
    JSON, which the override parser (YAML) reads back as the same value; paths as strings."""
    return [f"{k.replace('__', '.')}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in values.items()]


class Run:
    """A run folder (``outputs/<recipe>/<prompt-slug>@<time>``): ``path``, its resolved ``config``
    (``config.yaml``) and ``metrics`` (``metrics.json``; ``{}`` before the run has finished)."""

    def __init__(self, path: Path, config: C.RunConfig, metrics: dict):
        self.path, self.config, self.metrics = Path(path), config, metrics

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run folder; RunError (one line) if ``path`` holds no run's config.yaml."""
        path = Path(path)
        cfg = runs.load_run_config(path)
        metrics = path / "metrics.json"
        return cls(path, cfg, json.loads(metrics.read_text()) if metrics.is_file() else {})

    def export(self, formats: list[str], out: str | Path | None = None, **options) -> list[Path]:
        """Write ``formats`` (``threedgen.registry.FORMATS``: glb, obj, ply, splat, mp4, gif,
        views) into ``out`` (default ``<run>/export``) -> the files written. ``options`` are
        ``threedgen.export.formats.ExportConfig`` fields, e.g. ``texture_size=1024, frames=90``."""
        opts = C.from_overrides(ExportConfig, dotted(options))
        return export(self.path, list(formats), Path(out) if out else None, opts)

    def evaluate(self, views: int = 4, **overrides) -> dict:
        """Fidelity metrics of the run's last checkpoint from ``views`` orbit views (``threedgen
        eval``), as a dict; ``overrides``: its eval settings (``eval__clip_model="org/clip"``).
        metrics.json is left as the run wrote it."""
        return self.evaluate_dotted(dotted(overrides), views)

    def evaluate_dotted(self, overrides: list[str], views: int = 4) -> dict:
        """``evaluate`` with dotted ``eval.*=value`` overrides (the CLI's form). A CLIP model or
        prompt pool named there that cannot be read fails here, in one line, before anything
        renders."""
        if views < 1:
            raise ConfigError(f"views: must be at least 1, got {views}")
        cfg, rep = runs.load_representation(self.path)
        if overrides:
            cfg = replace(cfg, eval=C.load([self.path / runs.CONFIG_FILE], overrides).eval)
        name = clip_model_name(cfg)
        if name is not None:
            load_clip(name)
            prompt_pool(cfg, name)
        return evaluate_run(cfg, rep, torch.tensor(cfg.system.background), n_views=views)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def fit(prompt: str, config: str | Path | list = "gaussians-sds", **overrides) -> Run:
    """Optimise ``prompt`` with the recipe ``config`` (a shipped recipe's name, a YAML file, or a
    list of them merged in order) and dotted ``overrides`` (``trainer__max_steps=200``) into a
    fresh run folder under ``output_dir`` (default ``outputs``, relative to the current folder)."""
    configs = list(config) if isinstance(config, (list, tuple)) else [config]
    values = dotted({"prompt": prompt, **overrides})
    cfg = C.load(configs, values)
    argv = ["threedgen", "fit", *(a for c in configs for a in ("--config", str(c))), *values]
    return fit_config(cfg, argv)


def fit_config(cfg: C.RunConfig, argv: list[str], resume: Path | None = None) -> Run:
    """Fit ``cfg`` into a fresh run folder (``argv``: the command recorded in its cmd.txt), or,
    with ``resume``, continue that run folder (whose config ``cfg`` is) from its checkpoint.
    Everything that can be checked is checked before the run folder is made: the checkpoint to
    resume, the run to start from (``init_from``), the priors and the prompt's words. A fresh run
    that stops before its first checkpoint removes its folder: it could be neither resumed nor
    evaluated."""
    ckpt = None
    if resume is not None:
        ckpt, _ = runs.open_checkpoint(resume)  # damaged, unsafe or diverged: one line before anything loads
    elif cfg.init_from:
        _check_init_from(cfg)
    priors = runs.load_priors(cfg)  # and the prompts checked, before anything heavy is built
    # Lightning takes 2-3 s to import; only fitting needs it (systems/ is the layer above).
    from threedgen.systems.fit import fit as fit_system

    run = resume if resume is not None else runs.create_run_dir(cfg)
    with runs.removed_unless_checkpointed(run):
        if resume is None:
            runs.save_config(run, cfg, argv)
        metrics = fit_system(cfg, run, ckpt, **priors)
    return Run(run, cfg, metrics)


def _check_init_from(cfg: C.RunConfig) -> None:
    """The earlier stage exists, has a checkpoint, and converts to this representation."""
    source = Path(cfg.init_from)
    source_cfg = runs.load_run_config(source)
    runs.read_checkpoint(runs.checkpoint_path(source))
    conversion(source_cfg.system.representation.name, cfg.system.representation.name)  # refuses in one line
