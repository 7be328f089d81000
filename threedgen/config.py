"""Typed configuration: dataclass schema, YAML recipes, dotted overrides, whole-tree validation.

``load(["configs/gaussians-sds.yaml"], ["prompt=a red cube", "trainer.max_steps=800"])`` merges the
files left to right with OmegaConf (a file is a path, or the name of a shipped recipe:
``load(["gaussians-sds"], ...)`` reads configs/gaussians-sds.yaml, installed as the package data
``threedgen.configs``) (a file's ``base: other.yaml`` is merged first, so a variant
recipe holds only what it changes), applies the overrides, then builds the dataclass tree. Every
problem raises ``ConfigError`` with the dotted path, before anything heavy is built:

    system.guidance.guidence_scale: unknown key; did you mean guidance_scale?

Parts chosen by name (``system.representation``, ``system.guidance``) are tagged unions: their
``name`` picks the dataclass from ``threedgen.registry``'s tables, then the rest is checked
against it.
Hyper-parameters that change during a run are typed ``Ramp`` objects, not magic lists.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from threedgen.registry import CONFIG_TABLES, FORMATS, GUIDANCE, PRIOR_SOURCES, REPRESENTATIONS
from threedgen.representations.generator import TriplaneGenerator, upsamplings
from threedgen.schedules import ConfigError, Ramp, Scheduled, check_at_least, check_image_size


# The most parameters a run may ask for (``Config.parameters()`` of its representation):
# 4 GiB of float32, 16 GiB with their gradients and Adam's two moments.
MAX_PARAMETERS = 2 ** 30


def check_representation_size(rep) -> None:
    n = rep.parameters()
    if n > MAX_PARAMETERS:
        raise ValueError(f"representation: too large (this {rep.name} holds about {n * 4 / 2**30:,.0f} GiB of "
                         f"parameters, {n * 16 / 2**30:,.0f} GiB with gradients and Adam's moments; at most "
                         f"{MAX_PARAMETERS * 4 / 2**30:g} GiB): lower its resolution, n or subdivisions")


# Ranges by field name, the same in every config class (a learning rate means the same thing in
# every representation): (pattern, lowest value). Scheduled values are checked at both ends.
FIELD_RANGES = ((re.compile(r"lr(_\w+)?"), 0.0),  # learning rates
                (re.compile(r"lambda_\w+"), 0.0),  # loss weights
                (re.compile(r"guidance_scale"), 0.0))


def _check_range(name: str, value, path: str) -> None:
    values = (value.start, value.end) if isinstance(value, Ramp) else (value,)
    for pattern, low in FIELD_RANGES:
        if pattern.fullmatch(name) and any(v < low for v in values if isinstance(v, (int, float))):
            raise ConfigError(f"{path}: must be at least {low:g}, got {value}")


# --- the schema --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraConfig:
    """Random training cameras (degrees, world units) and the fixed evaluation orbit."""

    batch_size: int = 4
    resolution: int = 32
    elevation: tuple[float, float] = (-10.0, 60.0)
    distance: tuple[float, float] = (2.6, 3.0)
    fov_y: tuple[float, float] = (30.0, 30.0)
    eval_elevation: float = 20.0
    eval_distance: float = 2.8
    eval_fov_y: float = 30.0
    views_per_group: int = 1  # multi-view priors (MVDream: 4): groups of views 360/V degrees apart

    def __post_init__(self):
        check_at_least(self, 1, "batch_size")
        check_image_size("resolution", self.resolution, self.batch_size)
        if self.views_per_group < 1 or self.batch_size % self.views_per_group:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of views_per_group "
                             f"({self.views_per_group})")


@dataclass(frozen=True)
class PromptConfig:
    """Angles in degrees. view_dependent None: on unless the prior is camera-conditioned."""

    view_dependent: bool | None = None
    front_threshold: Scheduled = 45.0  # |azimuth| < this: front view
    back_threshold: Scheduled = 45.0  # |azimuth| > 180 - this: back view
    overhead_threshold: Scheduled = 60.0  # elevation > this: overhead view (before azimuth)
    perp_neg: bool = False
    perp_neg_weight: Scheduled = 1.0
    cache: bool = True

    def __post_init__(self):
        if self.perp_neg and self.view_dependent is False:
            raise ValueError("perp_neg needs view-dependent prompts (view_dependent: true or unset)")


@dataclass(frozen=True)
class PriorConfig:
    """embedded: the prior shipped in the package (embedded_video: its text-to-video twin, for 4D
    runs); diffusers: any Stable-Diffusion-layout checkpoint
    (SD 1.x/2.x, SDXL, pixel models, video models, converted MVDream folders), a local folder or a
    hub id in ``path``; mvdream: MVDream's released single file in ``path`` (a local file or
    org/repo/filename on the hub) plus the Stable Diffusion 2.1 base it was fine-tuned from."""

    name: str = "embedded"  # a source in threedgen.registry.PRIOR_SOURCES
    path: str | None = None
    base: str = "stabilityai/stable-diffusion-2-1-base"  # mvdream: VAE, text encoder, tokenizer, scheduler
    resolution: int | None = None  # image size renders are resized to; None: the model's own
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # half precision on CUDA only
    attention_slicing: bool = False
    vae_tiling: bool = False  # encode/decode large images tile by tile
    vae_slicing: bool = False  # encode/decode a batch one image at a time
    cpu_offload: bool = False  # stream the UNet and VAE through the GPU (accelerate); CUDA only

    def __post_init__(self):
        if self.name not in PRIOR_SOURCES:
            raise ValueError(f"name: unknown prior source {self.name!r} (known: {', '.join(PRIOR_SOURCES)})")
        embedded = self.name.startswith("embedded")
        if not embedded and not self.path:
            raise ValueError(f"path: a {self.name} prior needs a checkpoint (local path or hub id)")
        if embedded and self.path:
            raise ValueError(f"path: the {self.name} prior takes no path (name: diffusers loads a folder)")


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 600
    seed: int = 0
    val_every: int = 200
    ckpt_every: int = 100
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    # Lightning DDP, amortized runs only (system.amortized): processes per node and nodes
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp"] = "auto"

    def __post_init__(self):
        check_at_least(self, 1, "max_steps", "ckpt_every", "devices", "num_nodes")
        if self.devices * self.num_nodes > 1 and self.strategy != "ddp":
            raise ValueError("strategy: several devices or nodes need strategy=ddp")
        check_at_least(self, 0, "val_every", "seed")
        if self.seed >= 2**32:
            raise ValueError(f"seed: must be below 2^32, got {self.seed}")
        if self.threads is not None:
            check_at_least(self, 1, "threads")


@dataclass(frozen=True)
class TestConfig:
    """End-of-run renders: a turntable of ``n_frames`` at ``resolution``, and ``export``'s
    formats with default options."""

    n_frames: int = 36
    resolution: int = 64
    fps: int = 12
    export: tuple[str, ...] = ("glb",)  # formats written to <run>/export at the end (threedgen export)
    eval_times: int = 8  # 4D runs: the times at which metrics.json judges the shape

    def __post_init__(self):
        check_at_least(self, 1, "n_frames", "fps", "eval_times")
        check_image_size("resolution", self.resolution, self.n_frames)
        unknown = [f for f in self.export if f not in FORMATS]
        if unknown:
            raise ValueError(f"export: unknown format {unknown[0]!r} (known: {', '.join(FORMATS)})")


@dataclass(frozen=True)
class VideoConfig:
    """Stage 2 of a 4D run (4D-fy's hybrid optimisation): from step ``start`` on, each step is,
    with probability ``image_probability``, an image-guidance step at one random time, else a
    video step: one camera, ``frames`` consecutive times 1/frames apart from a random start,
    rendered at ``resolution`` and scored by ``guidance`` (one diffusion timestep per clip) from
    ``prior``, a text-to-video model. Before ``start`` the canonical object is fitted alone."""

    # a guidance method's Config, chosen by its ``name`` (methods without their own optimizers)
    guidance: Any = field(metadata={"table": "guidance"})
    prior: PriorConfig = field(default_factory=lambda: PriorConfig(name="embedded_video"))
    start: int = 300
    frames: int = 8
    image_probability: float = 0.25
    resolution: int = 32
    camera_elevation: tuple[float, float] = (0.0, 40.0)  # of the clip's camera
    # The clip camera's azimuth range, degrees (0 faces the object's front, the mug's handle).
    # None: the range the video prior's training clips were filmed from, as its world.json
    # records it (``check.training_azimuth``; every azimuth for a prior that records none). Videos
    # film their subjects from a preferred side; over every azimuth a spin is a camera orbit,
    # which a prior cannot learn.
    camera_azimuth: tuple[float, float] | None = None
    # Video steps train the deformation only (DreamGaussian4D), so the video prior cannot reshape
    # the object; true: they train the canonical Gaussians too (4D-fy).
    train_canonical: bool = False
    # The image guidance's prompt; None: the prompt in the image prior's words (a closed
    # vocabulary drops the motion words and reads "ball" as "sphere"), else the prompt itself.
    image_prompt: str | None = None
    # True: the video guidance's CFG is taken against the image prompt (the object without its
    # motion) instead of the empty prompt (or negative_prompt), so that its scale amplifies the
    # motion alone; how the object looks is the image prior's job. A camera-conditioned video
    # prior sees the clip's camera in both branches. For a still prompt the video guidance is
    # then the conditional prediction alone.
    motion_only_guidance: bool = False
    # Image steps see the object in its own frame: at their time, without the representation's
    # root motion (false). The image prior knows objects at rest at the centre, so with the root
    # motion it pulls a bouncing ball back to the centre by reshaping it (a ball stretched along
    # its bounce, a cone). True: with the root motion, as the video steps see it.
    image_root_motion: bool = False

    def __post_init__(self):
        if self.start < 0 or self.frames < 2:
            raise ValueError("start >= 0 and frames >= 2 are required")
        check_image_size("resolution", self.resolution, self.frames)
        if not 0 <= self.image_probability <= 1:
            raise ValueError("image_probability must lie in [0, 1]")
        if self.camera_azimuth is not None and not -180 <= self.camera_azimuth[0] <= self.camera_azimuth[1] <= 180:
            raise ValueError("camera_azimuth must be [low, high] with -180 <= low <= high <= 180, or null")


@dataclass(frozen=True)
class AmortizedConfig:
    """One prompt-conditioned generator for a whole prompt corpus (systems/amortized.py). Each
    step draws ``prompts_per_step`` prompts from this process's shard of ``corpus`` (a text file,
    one prompt a line; a relative path is read from the working folder) and renders
    ``system.camera.batch_size`` views of each; the total batch is prompts_per_step x processes."""

    corpus: str
    generator: TriplaneGenerator.Config = field(default_factory=TriplaneGenerator.Config)
    prompts_per_step: int = 4

    def __post_init__(self):
        check_at_least(self, 1, "prompts_per_step")
        if not self.corpus.strip():
            raise ValueError("corpus: is empty; give a text file with one prompt a line")


@dataclass(frozen=True)
class SystemConfig:
    representation: Any = field(metadata={"table": "representations"})  # a Config chosen by its ``name``
    guidance: Any = field(metadata={"table": "guidance"})  # a guidance method's Config, chosen by its ``name``
    prior: PriorConfig = field(default_factory=PriorConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Clamp the gradient reaching each rendered pixel to [-c, c] (Dreamer XL); 0 = off.
    pixel_grad_clip: Scheduled = 0.0
    video: VideoConfig | None = None  # set: a text-to-4D run (needs a dynamic representation)
    amortized: AmortizedConfig | None = None  # set: one generator for a prompt corpus

    def __post_init__(self):
        check_representation_size(self.representation)
        if self.amortized is not None and (self.representation.name != "triplane" or self.video is not None):
            raise ValueError(f"amortized: the generator outputs triplanes (representation.name: triplane, "
                             f"no video), not {self.representation.name}")
        if self.amortized is not None:
            try:
                upsamplings(self.representation.resolution, self.amortized.generator.tokens)
            except ValueError as e:
                raise ValueError(f"amortized: generator: {e}") from None
        if self.video is None:
            return
        if not REPRESENTATIONS[self.representation.name].dynamic:
            raise ValueError(f"video: a 4D run needs a dynamic representation (dynamic_gaussians), "
                             f"not {self.representation.name}")
        if GUIDANCE[self.video.guidance.name].trains_model:
            raise ValueError(f"video.guidance: {self.video.guidance.name} trains its own model; video "
                             "guidance takes a method without one ("
                             f"{', '.join(k for k, g in GUIDANCE.items() if not g.trains_model)})")


@dataclass(frozen=True)
class EvalConfig:
    """CLIP metrics of a run (``threedgen.evaluate``): CLIP score and CLIP R-precision from
    ``views`` views evenly spaced around the evaluation orbit, the first at azimuth 0 (the front).

    clip_model: a hub id ("openai/clip-vit-base-patch32"), a local folder in transformers'
    CLIPModel layout, "embedded" (the embedded world's CLIP, shipped), "auto" ("embedded" for a
    run on the embedded prior, none for any other: the world's CLIP knows only the world) or null
    (no CLIP metrics; ``eval.clip_model=`` on the command line). prompt_pool: a file of distractor
    prompts, one a line; null: the world's 36 prompts for the embedded CLIP, else the shipped pool
    (``threedgen/priors/clip_prompts.txt``). views: 8, every 45 degrees, so that the back of the
    object (a Janus face) counts as much as its front."""

    clip_model: str | None = "auto"
    prompt_pool: str | None = None
    views: int = 8

    def __post_init__(self):
        check_at_least(self, 1, "views")


@dataclass(frozen=True)
class ResourcesConfig:
    """What one prompt of ``threedgen batch`` reserves on its Ray cluster (a plain ``fit``
    ignores it). gpus: None takes one GPU when the cluster has any, else none; a fraction packs
    several prompts on one GPU. memory_gb: 0 reserves no memory."""

    cpus: float = 1.0
    gpus: float | None = None
    memory_gb: float = 0.0

    def __post_init__(self):
        if self.cpus <= 0:
            raise ValueError(f"cpus: must be above 0, got {self.cpus}")
        for name in ("gpus", "memory_gb"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name}: must be at least 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    prompt: str
    system: SystemConfig
    name: str = "run"  # the recipe's name: runs go to <output_dir>/<name>/<prompt-slug>@<time>
    negative_prompt: str = ""
    output_dir: str = "outputs"
    init_from: str | None = None  # a run folder: start from its representation (stage chaining)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    test: TestConfig = field(default_factory=TestConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)  # per prompt of a batch

    def __post_init__(self):
        if not self.prompt.strip():
            raise ValueError('prompt: the prompt is empty; give one, e.g. prompt="a red cube"')
        if not self.output_dir.strip():
            raise ValueError("output_dir: is empty")
        parts = Path(self.name).parts
        if not parts or Path(self.name).is_absolute() or ".." in parts:
            raise ValueError(f"name: {self.name!r} is not a plain relative path (runs go to "
                             "<output_dir>/<name>/...; no '..', no leading '/')")
        t = self.trainer
        if self.system.amortized is None and (t.devices * t.num_nodes > 1 or t.strategy == "ddp"):
            raise ValueError("trainer: several processes (devices, num_nodes, strategy=ddp) train an amortized "
                             "generator (system.amortized); a per-prompt run takes one device")
        if self.system.amortized is not None and self.init_from:
            raise ValueError("init_from: an amortized run starts its generator from scratch (fine-tune a "
                             "generated run folder instead)")
        if self.system.amortized is not None and self.test.export:
            raise ValueError("test: export: an amortized run exports nothing itself; use [] and export the "
                             "run folders `threedgen generate` writes")


# --- building dataclasses from plain data ------------------------------------------------------

def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _convert(tp, value, path: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if Ramp in args and isinstance(value, dict):
            return build(Ramp, value, path)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        items = args if args[-1] is not Ellipsis else [args[0]] * len(value)
        if len(items) != len(value):
            raise ConfigError(f"{path}: expected {len(items)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(items, value)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        ok = isinstance(value, int) if tp is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ConfigError(f"{path}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return tp(value)
    if tp is str:
        if value is None:  # "key=" with nothing after the "=": the empty string
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported config type {tp}")  # a schema bug, not a user error


def build(cls, data: dict, path: str = ""):
    """Build dataclass ``cls`` from nested dicts; raise ConfigError naming the first bad path."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key{_suggest(str(key), fields)}")
    kwargs = {}
    for name, f in fields.items():
        p = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{p}: missing required value")
            continue
        table = f.metadata.get("table")
        if table is not None:
            kwargs[name] = _build_tagged(table, data[name], p)
        else:
            kwargs[name] = _convert(hints[name], data[name], p)
            _check_range(name, kwargs[name], p)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ checks of values, "<field>: ..." or about several
        named = str(e).split(":", 1)[0] in fields
        raise ConfigError(f"{prefix}{e}" if named else f"{path or cls.__name__}: {e}") from None


def _build_tagged(table_name: str, data, path: str):
    """A tagged union: ``data["name"]`` picks the Config class from registry.CONFIG_TABLES[table_name]."""
    table = CONFIG_TABLES[table_name]
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{path}.name: missing required value (one of {', '.join(table)})")
    name = data["name"]
    if name not in table:
        close = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{path}.name: unknown {path.rsplit('.', 1)[-1]} {name!r}{hint} "
                          f"(known: {', '.join(table)})")
    return build(table[name].Config, data, path)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# --- recipes ----------------------------------------------------------------------------------

# The repository's configs/ folder, installed as this package (pyproject.toml's package-dir), so a
# checkout, an editable install and a wheel read the same files.
RECIPE_PACKAGE = "threedgen.configs"


def recipes() -> dict[str, Path]:
    """The shipped recipes by name: ``{"gaussians-sds": .../configs/gaussians-sds.yaml, ...}``."""
    folder = Path(str(importlib.resources.files(RECIPE_PACKAGE)))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def shipped_path(path: str | Path) -> Path:
    """A file a recipe names (``configs/corpora/world-train.txt``): as given when it exists, else
    the shipped one under the installed configs/ folder, so recipes by name work from any folder."""
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parts[:1] != ("configs",):
        return path
    return Path(str(importlib.resources.files(RECIPE_PACKAGE))).joinpath(*path.parts[1:])


def recipe_path(config: str | Path) -> Path:
    """A ``--config`` value as a file: an existing file or any path with a folder or a suffix
    (``configs/gaussians-sds.yaml``) is taken as it is; a bare name (``gaussians-sds``) is a
    shipped recipe, and an unknown one raises a one-line ConfigError naming the close ones."""
    path = Path(config)
    if path.is_file() or len(path.parts) != 1 or path.suffix:
        return path
    known = recipes()
    if path.name in known:
        return known[path.name]
    close = difflib.get_close_matches(path.name, list(known), n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(close[:-1])}{' or ' if close[:-1] else ''}{close[-1]}?" if close
            else f"recipes: {', '.join(known)}")
    raise ConfigError(f"{config}: no such recipe or file; {hint} (or give a path to a YAML file)")


def _read(f: str | Path, seen: tuple = ()) -> list:
    """One recipe file as OmegaConf parts: its ``base:`` recipe's parts (a path relative to the
    file, read first, recursively), then its own keys."""
    f = Path(f)
    try:
        part = OmegaConf.load(f)
    except OSError as e:
        raise ConfigError(f"{f}: cannot read config file ({e.strerror})") from None
    except Exception as e:  # YAML syntax errors
        raise ConfigError(f"{f}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not part:
        raise ConfigError(f"{f}: the config file is empty")
    if not OmegaConf.is_dict(part):
        raise ConfigError(f"{f}: expected a mapping of config keys, got a list")
    if "base" not in part:
        return [part]
    base = f.parent / str(part.pop("base"))
    if base.resolve() in (*seen, f.resolve()):
        raise ConfigError(f"{f}: base: {base} includes itself")
    return _read(base, (*seen, f.resolve())) + [part]


def _merge(parts: list, overrides: list[str]) -> dict:
    """OmegaConf parts, then dotted ``key=value`` overrides, merged into plain data."""
    try:
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"{o}: overrides are dotted key=value pairs")
        parts = [*parts, OmegaConf.from_dotlist(list(overrides))]
        return OmegaConf.to_container(OmegaConf.merge(*parts), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None


def from_overrides(cls, overrides: list[str]):
    """Dataclass ``cls`` from ``key=value`` pairs alone (e.g. export options), validated."""
    return build(cls, _merge([], overrides))


def load(files: list[str | Path], overrides: list[str] = ()) -> RunConfig:
    """Merge YAML files or recipe names (each after its ``base:`` recipe) and ``key=value``
    overrides, then validate the whole tree."""
    files = [recipe_path(f) for f in files]
    data = _merge([p for f in files for p in _read(f)], overrides)
    if files and "name" not in data:
        data["name"] = Path(files[-1]).stem
    return build(RunConfig, data)
