"""threedgen: text-to-3D and text-to-4D by score distillation.

    import threedgen
    run = threedgen.fit("a red cube", trainer__max_steps=200)  # config="gaussians-sds"
    run.export(["glb", "mp4"])                                 # -> the files written
    run.evaluate()                                             # -> metrics, as a dict
    threedgen.Run.open(run.path)                               # a run folder, later

``fit(prompt, config="gaussians-sds", **overrides) -> Run``: ``config`` is a shipped recipe's
name (``threedgen.recipes()``), a YAML file or a list of them; overrides are the CLI's dotted
keys with ``__`` for each dot (``trainer__max_steps=200`` is ``trainer.max_steps=200``). Bad
input raises the CLI's one-line errors: ``ConfigError``, ``PromptError``, ``PriorLoadError``,
``RunError``, ``ExportError``. See threedgen/api.py.

Importing this package imports nothing else: each name loads its module on first use (torch and
diffusers with the API, Lightning only once a fit starts).
"""

from __future__ import annotations

__all__ = ["fit", "Run", "recipes", "ConfigError", "PromptError", "PriorLoadError", "RunError", "ExportError"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'threedgen' has no attribute {name!r}")
    # On first use, not at import: `import threedgen` stays free of torch (threedgen/api.py).
    from threedgen import api

    return getattr(api, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
