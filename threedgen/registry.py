"""Every name -> class table, and the only place a kind is chosen.

A recipe names its parts (``system.representation.name: gaussians``, ``system.guidance.name:
sds``, ``system.prior.name``, ``test.export: [glb]``); the tables below turn those names into
classes and functions. Adding a kind is one file plus one entry here (and a recipe):

- REPRESENTATIONS: ``threedgen/representations/<name>.py``, a class following
  ``representations.protocol.Representation``;
- GUIDANCE: ``threedgen/guidance/<name>.py``, one method and its formula;
- FORMATS: a function (export Job) -> the files written, in ``threedgen/export/formats.py``;
- CONVERSIONS: stage chaining (``init_from``) across kinds, (source name, target name) -> a
  function in ``threedgen/representations/convert.py`` (a kind starts from its own kind without one);
- PRIOR_FAMILIES: ``threedgen/priors/<family>.py``, an adapter over ``priors.diffusion.DiffusionPrior``
  (its codec, text encoding, added conditioning, camera) with a ``detects(folder)`` that reads
  a checkpoint's configs;
- PRIOR_SOURCES: ``system.prior.name``, where the checkpoint comes from -> a function (PriorConfig)
  -> a local folder.

Prior families are the one kind not named in a recipe: a checkpoint says what it is. A recipe
names a source (``system.prior.name: diffusers`` and a ``path``); ``load_prior`` turns it into a
folder, asks the families in PRIOR_FAMILIES' order whether the folder's configs are theirs (the
first yes wins, so the specific ones come first and ``sd``, which takes any folder, last) and
loads it with that adapter. The priors sit below this module and never import it: they know their
own family, not the list of families; so everything that loads a folder of unknown family (the
systems, the CLI, the benchmarks) loads it here, and code that knows the family it loads (the
world's checks load the embedded priors) calls the adapter's ``from_pretrained`` itself.

Systems (the Lightning glue) sit above this module, since they read the config; which one a run
takes is decided here too (``system_kind``), and ``threedgen.systems.fit`` maps the kind to its class.
"""

from __future__ import annotations

from pathlib import Path

from threedgen.export import formats as F
from threedgen.guidance.asd import ASD
from threedgen.guidance.csds import CSDS
from threedgen.guidance.esd import ESD
from threedgen.guidance.ism import ISM
from threedgen.guidance.sds import SDS
from threedgen.guidance.tsm import TSM
from threedgen.guidance.vsd import VSD
from threedgen.priors import diffusion as D
from threedgen.priors.base import PriorLoadError
from threedgen.priors.embedded.prior import Embedded, EmbeddedVideo
from threedgen.priors.mvdream import MVDream, mvdream_folder
from threedgen.priors.pixel import PixelSpace
from threedgen.priors.sd import StableDiffusion
from threedgen.priors.sdxl import SDXL
from threedgen.priors.video import TextToVideo
from threedgen.representations import convert as Cv
from threedgen.representations.dynamic_gaussians import DynamicGaussians
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.mesh import Mesh
from threedgen.representations.nerf import NeRF
from threedgen.representations.triplane import Triplane
from threedgen.schedules import ConfigError

REPRESENTATIONS = {"gaussians": Gaussians, "mesh": Mesh, "nerf": NeRF, "triplane": Triplane,
                   "dynamic_gaussians": DynamicGaussians}

GUIDANCE = {"sds": SDS, "vsd": VSD, "esd": ESD, "ism": ISM, "tsm": TSM, "asd": ASD, "csds": CSDS}

FORMATS = {"glb": F.mesh_format(F.glb, F.animated_glb), "obj": F.mesh_format(F.obj), "ply": F.mesh_format(F.ply),
           "splat": F.splat, "mp4": F.turntable("mp4"), "gif": F.turntable("gif"), "views": F.views,
           "gpteval3d": F.gpteval3d}

CONVERSIONS = {  # across kinds; every kind starts from a run of its own kind (Cv.same_kind)
    ("nerf", "mesh"): Cv.mesh_from_density, ("triplane", "mesh"): Cv.mesh_from_density,
    ("gaussians", "mesh"): Cv.mesh_from_density,
    ("nerf", "gaussians"): Cv.gaussians_from_density, ("triplane", "gaussians"): Cv.gaussians_from_density,
}

# Detection order: the first family whose ``detects(folder)`` holds loads the folder.
PRIOR_FAMILIES = {"mvdream": MVDream, "embedded_video": EmbeddedVideo, "video": TextToVideo, "embedded": Embedded,
                  "sdxl": SDXL, "pixel": PixelSpace, "sd": StableDiffusion}

PRIOR_SOURCES = {"embedded": D.embedded_folder, "embedded_video": D.embedded_video_folder,
                 "diffusers": D.diffusers_folder, "mvdream": mvdream_folder}

# The config's tagged unions: a field whose ``name`` picks its dataclass from one of these tables.
CONFIG_TABLES = {"representations": REPRESENTATIONS, "guidance": GUIDANCE}


def build_representation(cfg, seed: int = 0):
    return REPRESENTATIONS[cfg.name].from_config(cfg, seed=seed)


def build_guidance(cfg, prior):
    return GUIDANCE[cfg.name](cfg, prior)


def prior_family(folder: Path) -> type[D.DiffusionPrior]:
    """The adapter class of a checkpoint folder: the first in PRIOR_FAMILIES that detects it."""
    return next(family for family in PRIOR_FAMILIES.values() if family.detects(folder))


def prior_from_pretrained(path: str | Path = D.EMBEDDED_PATH, resolution: int | None = None,
                          dtype: str = "float32") -> D.DiffusionPrior:
    """A local folder or a hub id (``priors.diffusion.resolve_checkpoint``), loaded by its family."""
    folder = D.resolve_checkpoint(str(path))
    return prior_family(folder).from_pretrained(folder, resolution=resolution, dtype=dtype)


def load_prior(cfg) -> D.DiffusionPrior:
    """The prior a ``PriorConfig`` names: its source's folder, loaded by its family, with the
    config's memory options."""
    D.check_device_options(cfg.dtype, cfg.cpu_offload)
    prior = prior_from_pretrained(PRIOR_SOURCES[cfg.name](cfg), resolution=cfg.resolution, dtype=cfg.dtype)
    prior.set_memory_options(cfg.attention_slicing, cfg.vae_tiling, cfg.vae_slicing, cfg.cpu_offload)
    return prior


def load_video_prior(cfg) -> D.DiffusionPrior:
    """The prior a ``PriorConfig`` names, checked to be a text-to-video model."""
    prior = load_prior(cfg)
    if not prior.video:
        raise PriorLoadError("system.video.prior: not a text-to-video model (its UNet has no time axis)")
    return prior


def conversion(source_name: str, target_name: str):
    """The function (source, target config, seed) -> a ``target_name`` representation started
    from a ``source_name`` one (``init_from``): ``Cv.same_kind`` for the same kind."""
    if source_name == target_name:
        return Cv.same_kind
    if (source_name, target_name) not in CONVERSIONS:
        known = ", ".join(f"{a} -> {b}" for a, b in CONVERSIONS)
        raise ConfigError(f"init_from: cannot start a {target_name} from a {source_name} run (supported: same kind, {known})")
    return CONVERSIONS[source_name, target_name]


def convert(source, target_cfg, seed: int = 0):
    """A ``target_cfg.name`` representation initialised from ``source`` (representations.convert)."""
    return conversion(source.cfg.name, target_cfg.name)(source, target_cfg, seed)


def system_kind(cfg) -> str:
    """"amortized" for a prompt-corpus generator (``system.amortized``), "text_to_4d" for a run
    with video guidance (``system.video``), else "text_to_3d"."""
    if cfg.system.amortized is not None:
        return "amortized"
    return "text_to_3d" if cfg.system.video is None else "text_to_4d"
