"""Every registered representation has the members that its declared capabilities promise
(``threedgen/representations/protocol.py``), with signatures that accept every call the protocol
allows; and the check catches a kind that lacks one."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Literal, Protocol

import pytest
import torch
from torch import nn

from threedgen.registry import REPRESENTATIONS
from threedgen.render.types import RenderOutput
from threedgen.representations import protocol as P


def declared(proto: type) -> list[str]:
    """The member names a protocol declares, its protocol bases' included."""
    names = []
    for klass in proto.__mro__:
        if getattr(klass, "_is_protocol", False) and klass is not Protocol:
            names += [*vars(klass).get("__annotations__", {}), *vars(klass)]
    public = {n for n in names if not n.startswith("_") or n == "__len__"}
    return sorted(public)


def calls(sig: inspect.Signature) -> list[tuple[list, dict]]:
    """(args, kwargs) of the calls a signature allows: only the required arguments; every argument,
    positional ones by position; the required ones by position and every optional one by name."""
    params = list(sig.parameters.values())
    keyword_only = {p.name: None for p in params if p.kind is p.KEYWORD_ONLY}
    positional = [p for p in params if p.kind is not p.KEYWORD_ONLY]
    required = [None for p in positional if p.default is p.empty]
    optional = {p.name: None for p in positional if p.default is not p.empty}
    required_kw = {p.name: None for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
    return [(required, required_kw), ([None] * len(positional), keyword_only),
            (required, {**optional, **keyword_only})]


def signature_problem(proto: type, name: str, impl) -> str | None:
    """Why ``impl`` (bound) cannot take a call that ``proto.name`` allows, or None."""
    decl = inspect.getattr_static(proto, name)
    fn = decl.__func__ if isinstance(decl, classmethod) else decl
    sig = inspect.signature(fn)
    sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # self / cls
    for args, kwargs in calls(sig):
        try:
            inspect.signature(impl).bind(*args, **kwargs)
        except TypeError as e:
            return f"{name}{inspect.signature(impl)} cannot take {name}{sig}: {e}"
    return None


def problems(obj, protocols: list[type]) -> list[str]:
    """What ``obj`` (an instance) lacks of ``protocols``: data members on the instance, methods
    on its class with compatible signatures."""
    found = []
    for proto in protocols:
        for name in declared(proto):
            where = f"{type(obj).__name__}.{name} ({proto.__name__})"
            try:
                decl = inspect.getattr_static(proto, name)
            except AttributeError:
                decl = None  # an annotation: a data member
            if not hasattr(obj, name):
                found.append(f"{where}: missing")
            elif callable(decl) or isinstance(decl, classmethod):
                impl = getattr(obj, name)
                problem = signature_problem(proto, name, impl) if callable(impl) else "not callable"
                if problem:
                    found.append(f"{where}: {problem}")
    return found


def declaration_problems(kind: type) -> list[str]:
    """The capability declarations themselves: their values, and their one rule (a dynamic kind
    has splats: the motion metrics read them)."""
    found = [f"{kind.__name__}.{flag} must be a bool" for flag in ("dynamic", "has_splats", "colour_field")
             if not isinstance(getattr(kind, flag, None), bool)]
    if getattr(kind, "meshed_as", None) not in P.MESHED_AS:
        found.append(f"{kind.__name__}.meshed_as must be one of {sorted(P.MESHED_AS)}")
    if not found and kind.dynamic and not kind.has_splats:
        found.append(f"{kind.__name__}: dynamic without has_splats")
    return found


def kind_problems(kind: type, obj) -> list[str]:
    found = declaration_problems(kind)
    return found or problems(obj, P.promised(kind))


@pytest.mark.parametrize("name", list(REPRESENTATIONS))
def test_registered_kinds_keep_their_promises(name):
    kind = REPRESENTATIONS[name]
    assert issubclass(kind, nn.Module)
    assert dataclasses.is_dataclass(kind.Config) and kind.Config().name == name
    assert isinstance(kind.Config().parameters(), int)
    rep = kind.from_config(kind.Config(), seed=0)
    assert kind_problems(kind, rep) == []
    if kind.dynamic:  # its snapshots: static, with the kind's mesh and splat capabilities
        snapshot = rep.at_time(0.5)
        assert not snapshot.dynamic
        assert (snapshot.meshed_as, snapshot.has_splats) == (kind.meshed_as, kind.has_splats)
        assert problems(snapshot, [P.Renderable, P.MESHED_AS[kind.meshed_as], P.Splats]) == []


# ----------------------------------------------------------------------------------------- planted
class Voxels(nn.Module):
    """A complete tiny kind (a density and colour grid): the planted ones below each lose one
    member or break one signature."""

    dynamic, meshed_as, has_splats, colour_field = False, "isosurface", False, True
    aabb = 1.0

    @dataclasses.dataclass(frozen=True)
    class Config:
        name: Literal["voxels"] = "voxels"

        def parameters(self) -> int:
            return 4

    def __init__(self, cfg=None):
        nn.Module.__init__(self)  # not super(): planted() copies this body into other classes
        self.cfg = cfg or self.Config()
        self.grid = nn.Parameter(torch.zeros(4))

    @classmethod
    def from_config(cls, cfg, seed: int = 0):
        return cls(cfg)

    def render(self, cameras, background, generator=None) -> RenderOutput:
        empty = lambda c: torch.zeros(len(cameras), c, cameras.height, cameras.width)  # noqa: E731
        return RenderOutput(empty(3) + background[:, None, None], empty(1), empty(1))

    def surface_colour(self, points, normals):
        return points

    def optimizers(self):
        return {}

    def regularisers(self, out, step):
        return {}

    def pre_backward(self, step, optimizers):
        pass

    def post_step(self, step, out, optimizers):
        pass

    def load_weights(self, state):
        self.load_state_dict(state)

    def density_grid(self, resolution):
        return torch.zeros(resolution, resolution, resolution)

    def colours(self, points):
        return points


def planted(**changes) -> type:
    """Voxels with members replaced (a value) or deleted (None)."""
    body = {k: v for k, v in vars(Voxels).items() if k not in ("__dict__", "__weakref__")}
    body.update(changes)
    return type("Planted", (nn.Module,), {k: v for k, v in body.items() if v is not None})


def test_the_check_passes_a_complete_kind():
    assert kind_problems(Voxels, Voxels()) == []


@pytest.mark.parametrize("changes, message", [
    ({"density_grid": None}, "density_grid (Isosurfaced): missing"),
    ({"colours": None}, "colours (ColourField): missing"),
    ({"load_weights": None}, "load_weights (Representation): missing"),
    ({"dynamic": True, "has_splats": True}, "params (Splats): missing"),
    ({"dynamic": True}, "dynamic without has_splats"),
    ({"meshed_as": "voxels"}, "meshed_as must be one of"),
    ({"render": lambda self, cameras, background: None}, "render"),  # takes no generator
    ({"post_step": lambda self, step, out: None}, "post_step"),  # takes no optimizers
    ({"regularisers": lambda self, out, step, scale: {}}, "regularisers"),  # requires one more
])
def test_the_check_fails_a_kind_that_breaks_a_promise(changes, message):
    kind = planted(**changes)
    found = kind_problems(kind, kind())
    assert any(message in p for p in found), found
