"""Stage chaining through the CLI: ``init_from=RUN_DIR`` starts a run from an earlier run's
representation (coarse NeRF -> mesh, NeRF -> Gaussians), resumes without redoing it, and rejects
what it cannot convert."""

import pytest
import torch

from tests.helpers import REPO
from tests.test_cli import one_line_error
from tests.test_fit import fit, weights
from threedgen.cli import main
from threedgen.registry import REPRESENTATIONS, convert
from threedgen.runs import load_representation

NERF = str(REPO / "configs" / "nerf-sds.yaml")
MESH = str(REPO / "configs" / "mesh-sds.yaml")
GAUSSIANS = str(REPO / "configs" / "gaussians-sds.yaml")


def test_nerf_to_mesh_and_gaussians(tmp_path):
    coarse = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", "name=coarse")
    _, nerf = load_representation(coarse)
    mesh_run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", f"init_from={coarse}",
                   "name=refine", config=MESH)
    _, mesh = load_representation(mesh_run)
    # The refined mesh is the coarse stage's isosurface (not the default icosphere): it renders
    # the NeRF's silhouette, and its colour grid starts from the NeRF's colours.
    assert mesh.faces.shape[0] != 20 * 4 ** mesh.cfg.subdivisions
    from threedgen.cameras import orbit
    cams, bg = orbit(4, 20.0, 2.8, 30.0, 48), torch.ones(3)
    with torch.no_grad():
        ma, mb = nerf.render(cams, bg).alpha > 0.5, mesh.render(cams, bg).alpha > 0.5
        assert (ma & mb).sum() / (ma | mb).sum() > 0.85
        v = mesh.verts
        assert (mesh.albedo(v) - nerf.colours(v)).abs().mean() < 0.05

    gauss_run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", f"init_from={coarse}",
                    "name=splat", "system.representation.n=500", config=GAUSSIANS)
    _, gauss = load_representation(gauss_run)
    r = gauss.means.norm(dim=-1)
    assert 0.35 < float(r.median()) < 0.9  # on the coarse surface, not filling the initial ball


def test_resume_reads_its_own_checkpoint_not_the_earlier_stage(tmp_path):
    """A resumed mesh stage restores its own topology from its checkpoint: the earlier stage's
    folder is not needed any more."""
    import shutil

    coarse = fit(tmp_path, "prompt=a green cone", "trainer.max_steps=2", "name=coarse")
    run = fit(tmp_path, "prompt=a green cone", "trainer.max_steps=2", f"init_from={coarse}",
              "name=refine", config=MESH)
    before = weights(run)
    shutil.rmtree(coarse)
    assert main(["fit", "--resume", str(run)]) == 0
    after = weights(run)
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(before[k], after[k], msg=k)


def test_bad_init_from(tmp_path, capsys):
    assert main(["fit", "--config", MESH, "prompt=a red cube", f"output_dir={tmp_path}",
                 f"init_from={tmp_path / 'nowhere'}"]) == 2
    assert "not a run folder" in one_line_error(capsys)
    mesh_run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=1", "name=m", config=MESH)
    assert main(["fit", "--config", NERF, "prompt=a red cube", f"output_dir={tmp_path}",
                 f"init_from={mesh_run}"]) == 2
    assert "init_from: cannot start a nerf from a mesh run" in one_line_error(capsys)


def test_gaussians_to_mesh_through_their_density():
    """Gaussians -> mesh: the isosurface of the mixture density renders the splats' silhouette."""
    from threedgen.cameras import orbit
    from threedgen.registry import convert
    from threedgen.representations.gaussians import Gaussians
    from threedgen.representations.mesh import Mesh

    g = Gaussians.from_config(Gaussians.Config(n=1500, init="ball", init_radius=0.5, init_opacity=0.8))
    mesh = convert(g, Mesh.Config(init_resolution=40), seed=0)
    cams, bg = orbit(4, 20.0, 2.8, 30.0, 48), torch.ones(3)
    with torch.no_grad():
        ma, mb = g.render(cams, bg).alpha > 0.5, mesh.render(cams, bg).alpha > 0.5
    assert (ma & mb).sum() / (ma | mb).sum() > 0.85


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_every_kind_starts_from_its_own_kind(name):
    """init_from between runs of one kind needs no CONVERSIONS entry: the weights carry over."""
    cls = REPRESENTATIONS[name]
    source = cls.from_config(cls.Config(), seed=1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.25)
    target = convert(source, cls.Config(), seed=2)
    assert type(target) is cls
    torch.testing.assert_close(target.state_dict(), source.state_dict())


def test_a_grid_of_another_size_is_refused_in_one_line():
    from threedgen.representations.nerf import NeRF
    from threedgen.schedules import ConfigError

    with pytest.raises(ConfigError, match=r"^init_from: cannot start from a nerf of other sizes \(size mismatch") as e:
        convert(NeRF.from_config(NeRF.Config(resolution=16)), NeRF.Config(resolution=24))
    assert "\n" not in str(e.value)
