"""Triplane field: plane sampling against a hand-computed case, gradients, empty-space skipping."""

import dataclasses

import pytest
import torch

from threedgen.cameras import orbit
from threedgen.render.grids import sample_triplane
from threedgen.representations.triplane import Triplane


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_planes(R: int, aabb: float) -> torch.Tensor:
    """[3, 2, R, R]: channel 0 of plane k holds its first axis' coordinate, channel 1 its second's."""
    v = torch.linspace(-aabb, aabb, R)
    first = v[None, :].expand(R, R)  # varies along j (width)
    second = v[:, None].expand(R, R)  # varies along i (height)
    return torch.stack([torch.stack([first, second])] * 3)


def test_features_sample_each_plane_at_the_points_projection():
    """Bilinear interpolation is exact for linear data: with coordinate-valued planes, feature 0 is
    x + x + y and feature 1 is y + z + z (xy, xz, yz planes)."""
    aabb = 0.8
    p = (torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * aabb
    f = sample_triplane(_linear_planes(9, aabb), p, aabb)
    x, y, z = p.unbind(-1)
    torch.testing.assert_close(f, torch.stack([2 * x + y, y + 2 * z], -1), atol=1e-5, rtol=1e-5)


def test_features_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    planes = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    points = ((torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda pl, pt: sample_triplane(pl, pt, 1.0), (planes, points))


def _triplane(**kw) -> Triplane:
    return Triplane(Triplane.Config(**{"resolution": 16, **kw}), seed=0)


@pytest.mark.parametrize("skip_density, max_change, max_occupied", [(0.01, 0.005, 0.8), (None, 0.1, 0.3)],
                         ids=["tiny-threshold", "default"])
def test_occupancy_skipping_changes_the_render_little_and_keeps_gradients(skip_density, max_change, max_occupied):
    """A tiny threshold drops (almost) nothing; the default drops the initial blob's faint fringe
    (density < 0.2: r > ~0.65 of the blob) and keeps about a fifth of the box."""
    tp = _triplane(**({} if skip_density is None else {"skip_density": skip_density})).eval()
    cams, bg = orbit(2, 20.0, 2.8, 30.0, 16), torch.ones(3)
    full = tp.render(cams, bg)  # occupancy starts all-true: nothing skipped
    tp.update_occupancy()
    assert 0 < tp.occupancy.float().mean() < max_occupied
    skipped = tp.render(cams, bg)
    assert (full.alpha - skipped.alpha).abs().max() < max_change
    assert (full.alpha - skipped.alpha).abs().max() > 0  # something was skipped
    tp.train()
    out = tp.render(cams, bg, generator=torch.Generator().manual_seed(0))
    out.rgb.mean().backward()
    assert tp.planes.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tp.decoder.parameters())


def test_state_round_trip_includes_occupancy_and_seed_determinism():
    a, b = _triplane(), _triplane()
    assert torch.equal(a.planes, b.planes) and all(
        torch.equal(p, q) for p, q in zip(a.decoder.parameters(), b.decoder.parameters()))
    a.pre_backward(0, {})  # refreshes the occupancy grid at step 0
    c = _triplane()
    c.load_weights(a.state_dict())
    assert torch.equal(c.occupancy, a.occupancy) and not c.occupancy.all()


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="resolution"):
        Triplane.Config(resolution=1)
    assert dataclasses.replace(Triplane.Config(), channels=8).channels == 8
