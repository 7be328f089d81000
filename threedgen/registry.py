"""Every name -> class table, and the only place a kind is chosen.

A recipe names its parts (``system.representation.name: gaussians``, ``system.guidance.name:
sds``, ``system.prior.name``, ``test.export: [glb]``); the tables below turn those names into
classes and functions. Adding a kind is one file plus one entry here (and a recipe):

- REPRESENTATIONS: ``threedgen/representations/<name>.py``, a class following
  ``representations.protocol.Representation``;
- GUIDANCE: ``threedgen/guidance/<name>.py``, one method and its formula;
- FORMATS: a function (export Job) -> the files written, in ``threedgen/export/formats.py``;
- CONVERSIONS: stage chaining (``init_from``), (source name, target name) -> a function in
  ``threedgen/representations/convert.py``.

Systems (the Lightning glue) sit above this module, since they read the config; which one a run
takes is decided here too (``system_kind``), and ``systems.fit`` maps the kind to its class.
"""

from __future__ import annotations

from threedgen.export import formats as F
from threedgen.guidance.asd import ASD
from threedgen.guidance.csds import CSDS
from threedgen.guidance.esd import ESD
from threedgen.guidance.ism import ISM
from threedgen.guidance.sds import SDS
from threedgen.guidance.tsm import TSM
from threedgen.guidance.vsd import VSD
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
           "splat": F.splat, "mp4": F.turntable("mp4"), "gif": F.turntable("gif"), "views": F.views}

CONVERSIONS = {
    ("gaussians", "gaussians"): Cv.same_kind, ("nerf", "nerf"): Cv.same_kind,
    ("triplane", "triplane"): Cv.same_kind, ("mesh", "mesh"): Cv.same_kind,
    ("nerf", "mesh"): Cv.mesh_from_density, ("triplane", "mesh"): Cv.mesh_from_density,
    ("gaussians", "mesh"): Cv.mesh_from_density,
    ("nerf", "gaussians"): Cv.gaussians_from_density, ("triplane", "gaussians"): Cv.gaussians_from_density,
}

# The config's tagged unions: a field whose ``name`` picks its dataclass from one of these tables.
CONFIG_TABLES = {"representations": REPRESENTATIONS, "guidance": GUIDANCE}


def build_representation(cfg, seed: int = 0):
    return REPRESENTATIONS[cfg.name].from_config(cfg, seed=seed)


def build_guidance(cfg, prior):
    return GUIDANCE[cfg.name](cfg, prior)


def check_conversion(source_name: str, target_name: str) -> None:
    if (source_name, target_name) not in CONVERSIONS:
        known = ", ".join(f"{a} -> {b}" for a, b in CONVERSIONS if a != b)
        raise ConfigError(f"init_from: cannot start a {target_name} from a {source_name} run (supported: same kind, {known})")


def convert(source, target_cfg, seed: int = 0):
    """A ``target_cfg.name`` representation initialised from ``source`` (representations.convert)."""
    check_conversion(source.cfg.name, target_cfg.name)
    return CONVERSIONS[source.cfg.name, target_cfg.name](source, target_cfg, seed)


def system_kind(cfg) -> str:
    """"text_to_4d" for a run with video guidance (``system.video``), else "text_to_3d"."""
    return "text_to_3d" if cfg.system.video is None else "text_to_4d"
