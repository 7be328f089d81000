"""Device guards that run without a GPU (see tests/fake_device.py).

Every recipe is built on the CPU, as Lightning builds it, then moved to a stand-in accelerator
that computes on the CPU but enforces CUDA's device rules; two training steps and the end of
the run (test renders, metrics, exports) must go through without a tensor left behind on the
CPU, a CPU generator drawing for the accelerator, or a numba kernel fed an accelerator tensor.
"""

from dataclasses import replace

import pytest
import torch
from torch.utils._pytree import tree_map

from tests.fake_device import FAKE, DeviceMismatch, FakeDevice, OnFake
from tests.helpers import TINY
from tests.test_configs import RECIPES, stand_in_overrides
from threedgen import config as C
from threedgen.cameras import Cameras
from threedgen.export.formats import ExportConfig
from threedgen.export.run import export
from threedgen.prompts import PromptProcessor
from threedgen.registry import FORMATS, REPRESENTATIONS, system_kind
from threedgen.render import grids
from threedgen.runs import save_config


def build_system(cfg, run_dir):
    from threedgen.systems.fit import SYSTEMS

    return SYSTEMS[system_kind(cfg)](cfg, run_dir)


def steps_on_fake(system, n: int = 2) -> None:
    """Move ``system`` to the fake accelerator (as Lightning moves it before making the
    optimizers) and run n training steps."""
    if system.device != FAKE:  # as Lightning: set up, moved once, then a checkpoint restored
        system.setup("fit")
        system.to(FAKE)
    system.on_train_start()
    opts, guide = system.representation.optimizers(), system.guidance.optimizers()
    for _ in range(n):
        loss, _ = system.optimise(opts, {f"guidance/{k}": o for k, o in guide.items()})
        assert loss.device == FAKE and torch.isfinite(loss.cpu())


def test_fake_device_catches_a_cpu_tensor():
    """The guard fires on the failures seen on a real GPU: CPU rays meeting a moved grid
    (index_select with an accelerator index), CPU conditioning in a moved Linear, and a CPU
    generator drawing for the accelerator; legal mixes pass."""
    with FakeDevice():
        grid = torch.randn(4, 3).to(FAKE)
        assert isinstance(grid, OnFake) and grid.device == FAKE
        with pytest.raises(DeviceMismatch, match="index_select"):
            torch.randn(4, 3).index_select(0, torch.arange(2).to(FAKE))
        layer = torch.nn.Linear(3, 2).to(FAKE)
        with pytest.raises(DeviceMismatch):
            layer(torch.randn(5, 3))
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.randn(3, generator=torch.Generator().manual_seed(0), device=FAKE)
        with pytest.raises(RuntimeError):
            grid.numpy()
        out = layer(grid.index_select(0, torch.arange(2, device=FAKE))) * torch.tensor(2.0)
        out = out + torch.tensor([1.0, 2.0], device=out.device) + torch.zeros_like(out)
        assert out.device == FAKE and grid[torch.tensor([0, 1])].device == FAKE
        assert torch.allclose(out.cpu(), layer.cpu()(grid.cpu()[:2]) * 2 + torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_representations_build_with_an_accelerator_as_the_default_device(name):
    """Under ``torch.set_default_device("cuda")`` every factory call lands on the accelerator:
    a constructor's seeded draws still come from its CPU generator, on the CPU, and give the
    same parameters as a CPU build (the default device changes where, not what)."""
    cls = REPRESENTATIONS[name]
    with FakeDevice(), torch.device(FAKE):
        built = tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t,
                         cls.from_config(cls.Config(), seed=3).state_dict())
    torch.testing.assert_close(built, cls.from_config(cls.Config(), seed=3).state_dict())


def _no_move(self, device):  # the planted bug: cameras never leave the CPU
    return self


PLANTS = {  # name -> (recipe, owner, attribute, replacement, what fails)
    "cameras stay on the CPU": ("nerf-sds", Cameras, "to", _no_move, DeviceMismatch),
    "prompt embeddings stay on the CPU": ("gaussians-sds", PromptProcessor, "_follow_prior", lambda self: None,
                                          DeviceMismatch),
    # grids' dispatch as it was (``not grid.is_cuda``): every non-CUDA tensor to the numba kernels
    "numba kernels get accelerator tensors": ("nerf-sds", grids, "_use_kernels",
                                              lambda grid, points: not points.requires_grad, RuntimeError),
}


@pytest.mark.parametrize("plant", PLANTS)
def test_guard_fires_on_a_planted_bug(tmp_path, monkeypatch, plant):
    """The failures a real GPU run hit, planted back: a step that passes on the stand-in device
    fails there once the bug is in."""
    recipe, owner, attribute, bug, error = PLANTS[plant]
    cfg = C.load([RECIPES[0].parent / f"{recipe}.yaml"], ["prompt=a red cube"])
    with FakeDevice():
        steps_on_fake(build_system(cfg, tmp_path), 1)  # clean: passes
    monkeypatch.setattr(owner, attribute, bug)
    with FakeDevice(), pytest.raises(error):
        steps_on_fake(build_system(cfg, tmp_path), 1)


def test_densify_and_resume_on_the_device(tmp_path):
    """Gaussians densified on the device, then a resume as Lightning does it: the checkpoint is
    loaded on the CPU into a system already on the device; the next steps densify again."""
    cfg = C.load([RECIPES[0].parent / "gaussians-sds.yaml"], [
        "prompt=a red cube", "system.representation.n=100", "system.representation.densify_from=0",
        "system.representation.densify_every=1", "system.representation.grow_grad2d=0.0"])
    with FakeDevice():
        system = build_system(cfg, tmp_path)
        steps_on_fake(system, 2)
        grown = len(system.representation)
        checkpoint = {"state_dict": {k: v.cpu() if torch.is_tensor(v) else v for k, v in system.state_dict().items()}}
        resumed = build_system(cfg, tmp_path).to(FAKE)
        resumed.on_load_checkpoint(checkpoint)
        resumed.load_state_dict(checkpoint["state_dict"], strict=False)
        assert len(resumed.representation) == grown > 100
        steps_on_fake(resumed, 2)
    assert len(resumed.representation) > grown


# The end of a run depends on the representation alone: one recipe each goes through it, with
# every export format it has (small sizes: the stand-in device computes slowly). Baking by
# projection renders 48 views, so it runs where rendering is cheapest (the mesh).
FINISHED = {"gaussians-sds": ["glb", "obj", "ply", "splat", "mp4", "views"], "nerf-sds": ["glb", "gif"],
            "triplane-sds": ["glb"], "mesh-sds": ["glb", "gpteval3d"], "4d-gaussians-sds": ["splat", "mp4"]}
SMALL = ExportConfig(grid=24, texture_size=32, resolution=24, frames=3, azimuths=2, elevations=(20.0,), times=2)


def test_finished_covers_every_representation_and_format():
    """FINISHED is chosen by hand: a new representation or export format must join it."""
    recipes = {r.stem: r for r in RECIPES}
    kinds = {C.load([recipes[name]], ["prompt=a red cube"]).system.representation.name for name in FINISHED}
    assert kinds == set(REPRESENTATIONS)
    assert {f for formats in FINISHED.values() for f in formats} == set(FORMATS)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_device_clean(tmp_path, recipe):
    """Two steps; for one recipe per representation also the end of the run (test renders,
    turntable, metrics) and its exports."""
    overrides = ["prompt=a red cube", *TINY, "test.eval_times=1", *stand_in_overrides(recipe, tmp_path)]
    if "gaussians" in C.load([recipe], ["prompt=a red cube"]).system.representation.name:
        overrides.append("system.representation.n=500")  # the stand-in renders Gaussians densely
    cfg = C.load([recipe], overrides)
    run = tmp_path / "run"
    run.mkdir()
    save_config(run, cfg, ["test"])
    system = build_system(cfg, run)
    formats = FINISHED.get(recipe.stem)
    with FakeDevice():
        steps_on_fake(system)
        if formats:
            system.finish()
            opts = replace(SMALL, bake="project" if recipe.stem == "mesh-sds" else "query")
            files = export(run, formats, opts=opts, representation=system.representation)
    if formats:
        assert (run / "test" / "turntable.mp4").is_file() and (run / "metrics.json").is_file()
        assert all(f.is_file() for f in files) and len(files) >= len(formats)
