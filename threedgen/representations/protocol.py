"""What a representation is: the members its callers use, as ``typing.Protocol`` classes.

A representation kind is one file in ``threedgen/representations/`` holding a ``torch.nn.Module``
subclass, plus one entry in ``threedgen.registry.REPRESENTATIONS``. Every kind follows
``Representation`` (the system's training calls, on top of ``Renderable``: what export and
evaluation ask of anything they render). Members that only some kinds have are grouped by
capability; a kind declares its capabilities as class attributes, and callers read those
declarations, never probe with hasattr/isinstance:

    capability (class attribute)       promises           read by
    meshed_as == "triangles"           ``Triangles``      mesh export (the kind's own triangles)
    meshed_as == "isosurface"          ``Isosurfaced``    mesh export, stage chaining to a mesh
                                                          (``isosurface.extract_isosurface``)
    colour_field                       ``ColourField``    stage chaining (``convert.py``: colours)
    has_splats                         ``Splats``         splat export (``export/splat.py``)
    dynamic                            ``Dynamic``        4D system, export per frame, 4D eval

``promised(kind)`` lists the protocols of a kind's declarations; tests/test_protocol.py checks
that every registered kind has their members, with compatible signatures.

Shapes: B cameras of H x W pixels; M query points; N Gaussians; V vertices, F faces.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator, Literal, Protocol

import torch
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.render.types import RenderOutput

Optimizers = dict[str, torch.optim.Optimizer]


class Renderable(Protocol):
    """What export and evaluation ask of a representation, or of a dynamic one's snapshot
    (``Dynamic.at_time``): its declared capabilities, renders and surface colours."""

    dynamic: ClassVar[bool]
    """Renders at ``Cameras.time``: promises ``Dynamic``."""
    meshed_as: ClassVar[Literal["triangles", "isosurface"]]
    """How mesh export gets a surface: "triangles" promises ``Triangles`` (its own mesh),
    "isosurface" promises ``Isosurfaced`` (an isosurface of its density)."""
    has_splats: ClassVar[bool]
    """It is a set of 3D Gaussians: promises ``Splats`` (the splat format writes them)."""
    colour_field: ClassVar[bool]
    """It has a colour at any point of space: promises ``ColourField``."""

    def render(self, cameras: Cameras, background: Tensor, *,
               generator: torch.Generator | None = None) -> RenderOutput:
        """Render into ``cameras`` (on any device: the representation moves them to its own) over
        background [3]: rgb [B, 3, H, W], alpha and depth [B, 1, H, W]. In training mode
        (``train()``) the render may be stochastic, drawing from ``generator`` (a CPU one)."""

    def surface_colour(self, points: Tensor, normals: Tensor) -> Tensor:
        """points [M, 3] on its surface, outward unit normals [M, 3] -> rgb [M, 3] in [0, 1]: the
        colour its renders show there (mesh export bakes it)."""

    # torch.nn.Module members that export and evaluation use
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def eval(self) -> Renderable: ...


class Representation(Renderable, Protocol):
    """A kind in ``registry.REPRESENTATIONS``: a ``torch.nn.Module`` (the system registers it as a
    submodule, so ``.to()`` moves it and checkpoints hold its ``state_dict``) that the system
    builds from its config and trains, one step being

        pre_backward(step, opts); out = render(...); loss = guidance + sum(regularisers(out, step))
        backward; every optimizer steps; post_step(step, out, opts)

    with ``opts = optimizers()``."""

    Config: ClassVar[type]
    """Its frozen config dataclass (``system.representation``): a field ``name: Literal[<its
    registry name>]`` and a method ``parameters() -> int`` (the float32 numbers it allocates; the
    config's size check reads it)."""
    cfg: Any
    """The ``Config`` it was built from (``from_config``); its ``name`` picks stage conversions."""

    @classmethod
    def from_config(cls, cfg: Any, seed: int = 0) -> Representation:
        """A new representation of ``cfg``'s sizes; random initialisation from ``seed`` only."""

    def optimizers(self) -> Optimizers:
        """Its optimizers by name, the same objects on every call (until ``load_weights``)."""

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """The weighted regularisers active at ``step`` (their weights ``Scheduled``), by name:
        scalars added to the loss; ``out`` is this step's training render."""

    def pre_backward(self, step: int, optimizers: Optimizers) -> None:
        """Called before this step's render (e.g. refresh an occupancy grid)."""

    def post_step(self, step: int, out: RenderOutput, optimizers: Optimizers) -> None:
        """Called after the optimizers stepped, with this step's training render (e.g.
        densification, which reads ``out.info``)."""

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a ``state_dict`` (a checkpoint's, or another run's of the same kind), first
        resizing whatever it sizes differently (densified Gaussians, a mesh's topology)."""

    # torch.nn.Module members that training, checkpoints and benchmarks use
    def train(self, mode: bool = True) -> Representation: ...

    def state_dict(self) -> dict[str, Any]: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...


class Triangles(Protocol):
    """meshed_as == "triangles": the representation is a triangle mesh."""

    @property
    def verts(self) -> Tensor:
        """[V, 3] world positions (differentiable)."""

    @property
    def faces(self) -> Tensor:
        """[F, 3] long vertex indices, counter-clockwise seen from outside."""


class Isosurfaced(Protocol):
    """meshed_as == "isosurface": a density in the cube [-aabb, aabb]^3, whose isosurface (level
    chosen from its own renders' silhouettes) is its mesh."""

    @property
    def aabb(self) -> float:
        """Half-size of the cube that holds the object."""

    def density_grid(self, resolution: int) -> Tensor:
        """[R, R, R] density >= 0 at the vertices of a regular grid spanning the cube (R =
        resolution): entry [i, j, k] at (x_i, y_j, z_k), x = linspace(-aabb, aabb, R)."""


class ColourField(Protocol):
    """colour_field: a colour at any point of space (a stage started from it takes its colours)."""

    def colours(self, points: Tensor) -> Tensor:
        """points [M, 3] -> rgb [M, 3] in [0, 1], the view-independent colour there."""


class Splats(Protocol):
    """has_splats: a set of N 3D Gaussians, what the splat writer and the motion metrics read."""

    params: nn.ParameterDict
    """Raw parameters: "means" [N, 3], "scales" [N, 3] log-scales, "quats" [N, 4] wxyz
    (unnormalised), "opacities" [N] logits, "colors" [N, 3] rgb logits (sh_degree 0) or SH
    coefficients [N, (sh_degree + 1)^2, 3]."""
    sh_degree: int
    """Spherical-harmonic degree of the colours (0: view-independent rgb)."""

    def __len__(self) -> int:
        """N."""

    @property
    def means(self) -> Tensor:
        """[N, 3] centres."""

    @property
    def opacities(self) -> Tensor:
        """[N] opacities in (0, 1)."""


class Dynamic(Protocol):
    """dynamic: a representation that moves over time t in [0, 1] (one clip of the video prior).
    The motion metrics read ``Splats`` members of it and of its snapshots, so a dynamic kind
    declares has_splats too."""

    def render(self, cameras: Cameras, background: Tensor, *,
               generator: torch.Generator | None = None, canonical_grad: bool = True,
               root_motion: bool = True) -> RenderOutput:
        """``Renderable.render``, each camera at its own ``Cameras.time`` (cameras without times
        see the canonical object). canonical_grad False: gradients reach the motion only;
        root_motion False: the motion without its whole-object part (the 4D system's options)."""

    def at_time(self, t: float) -> Renderable:
        """A static snapshot at time t (dynamic False, this kind's meshed_as and has_splats and
        their members), detached: what export writes per frame."""


MESHED_AS = {"triangles": Triangles, "isosurface": Isosurfaced}


def promised(kind: type) -> list[type]:
    """The protocols that ``kind``'s declared capabilities promise, ``Representation`` first."""
    flags = [(kind.colour_field, ColourField), (kind.has_splats, Splats), (kind.dynamic, Dynamic)]
    return [Representation, MESHED_AS[kind.meshed_as], *[p for on, p in flags if on]]
