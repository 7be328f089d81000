"""The mesh representation: config checks, regularisers, the smooth vertex parametrisation, state
dicts across topologies, and a two-step fit of configs/mesh-sds.yaml."""

import json

import pytest
import torch
import trimesh

from tests.helpers import REPO
from tests.test_fit import fit, weights
from threedgen.cameras import orbit
from threedgen.config import load
from threedgen.schedules import ConfigError
from threedgen.representations.mesh import Mesh, UniformAdam, _Smooth

MESH = str(REPO / "configs" / "mesh-sds.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bad", [dict(radius=0.0), dict(subdivisions=-1), dict(ambient=1.5),
                                 dict(texture_resolution=1), dict(smoothing=-1.0),
                                 dict(light=(0.0, 0.0, 0.0))])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        Mesh.Config(**bad)


def test_config_errors_name_the_path():
    with pytest.raises(ConfigError, match="system.representation"):
        load([MESH], ["prompt=a red cube", "system.representation.radius=-1"])
    with pytest.raises(ConfigError, match="did you mean lambda_laplacian"):
        load([MESH], ["prompt=a red cube", "system.representation.lambda_laplacien=1"])


def test_regularisers_small_when_undeformed_and_grow_with_noise():
    cfg = Mesh.Config(subdivisions=3, smoothing=0.0, lambda_laplacian=1.0, lambda_normal=1.0,
                      lambda_edge=1.0)
    mesh = Mesh.from_config(cfg)
    before = {k: v.item() for k, v in mesh.regularisers(None, step=0).items()}
    assert set(before) == {"laplacian", "normal", "edge"}
    assert before["laplacian"] < 1e-4 and before["normal"] < 1e-2 and before["edge"] < 1e-2
    with torch.no_grad():
        mesh.offsets.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    after = mesh.regularisers(None, step=0)
    for k, v in after.items():
        assert v.item() > 10 * before[k], k
        (grad,) = torch.autograd.grad(v, mesh.offsets)
        assert grad.abs().sum() > 0, k
    assert Mesh.from_config(Mesh.Config()).regularisers(None, step=0) == {}  # weights 0: none


def test_smooth_parametrisation():
    mesh = Mesh.from_config(Mesh.Config(subdivisions=2, smoothing=5.0))
    u = torch.randn(mesh.offsets.shape, dtype=torch.float64, requires_grad=True)
    x = _Smooth.apply(u, mesh._smoother)
    # (I + lambda L) x = u, with L x_i = deg_i x_i - sum of neighbours
    a, b = mesh.edge_verts.unbind(1)
    sums = torch.zeros_like(x).index_add(0, a, x[b]).index_add(0, b, x[a])
    lx = mesh.degree[:, None] * x - sums
    assert torch.allclose(x + 5.0 * lx, u)
    assert x.detach().std() < 0.5 * u.detach().std()  # smoother than its input
    assert torch.autograd.gradcheck(lambda t: _Smooth.apply(t, mesh._smoother), (u,))


def test_uniform_adam_first_step_moves_the_largest_entry_by_lr():
    p = torch.nn.Parameter(torch.zeros(5))
    opt = UniformAdam([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 0.5, 0.0, 4.0])
    opt.step()
    assert torch.allclose(p.detach(), -0.1 * p.grad / 4.0, atol=1e-6)  # one scale for all


def test_render_is_a_centred_disc_with_gradients():
    mesh = Mesh.from_config(Mesh.Config(subdivisions=3))
    out = mesh.render(orbit(2, 20.0, 2.8, 30.0, 32), torch.ones(3))
    assert out.rgb.shape == (2, 3, 32, 32) and out.alpha[:, 0, 16, 16].eq(1).all()
    assert out.alpha[:, 0, 0, 0].eq(0).all()
    (out.rgb.mean() + out.alpha.mean()).backward()
    assert mesh.offsets.grad.abs().sum() > 0 and mesh.texture.grad.abs().sum() > 0


def test_load_weights_with_another_topology():
    cfg = Mesh.Config(subdivisions=2, texture_resolution=8)
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8)).subdivide()
    a = Mesh.from_mesh(torch.tensor(box.vertices), torch.tensor(box.faces), cfg, seed=1)
    with torch.no_grad():
        a.offsets.normal_(0.0, 0.01)
    b = Mesh.from_config(cfg)
    assert b.faces.shape != a.faces.shape
    b.load_weights(a.state_dict())
    assert torch.equal(b.faces, a.faces) and torch.equal(b.texture, a.texture)
    assert torch.allclose(b.verts, a.verts)
    cams = orbit(2, 20.0, 2.8, 30.0, 24)
    bg = torch.ones(3)
    with torch.no_grad():
        assert torch.allclose(b.render(cams, bg).rgb, a.render(cams, bg).rgb)
    with pytest.raises(ValueError, match="expected verts"):
        Mesh.from_mesh(torch.zeros(4, 2), torch.tensor(box.faces), cfg)


def test_two_step_fit(tmp_path):
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", config=MESH)
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 2 and 0 < m["coverage"] < 1
    w = weights(run)
    assert {"representation.base_verts", "representation.faces", "representation.offsets",
            "representation.texture"} <= set(w)
    assert w["representation.offsets"].abs().sum() > 0  # the vertices moved
