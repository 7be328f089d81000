"""Grid sampling for the volume fields: the CPU kernels against F.grid_sample (values and grid
gradients, inside and outside the box) and gradcheck of their backward."""

import pytest
import torch
import torch.nn.functional as F

from threedgen.render.grids import PLANE_AXES, sample_grid, sample_triplane

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_grid(grid, points, aabb):
    uvw = (points / aabb).flip(-1)[None, :, None, None]
    return F.grid_sample(grid[None], uvw, align_corners=True, padding_mode="border")[0, :, :, 0, 0].t()


def _reference_triplane(planes, points, aabb):
    p = points / aabb
    uv = torch.stack([p[:, list(axes)] for axes in PLANE_AXES])[:, :, None]
    return F.grid_sample(planes, uv, align_corners=True)[..., 0].sum(0).t()


def _points(n, aabb, seed, spread=1.3):
    """Points in a cube 1.3x the box: about half of them outside it on some axis."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * aabb * spread


@pytest.mark.parametrize("kind", ["grid", "triplane"])
def test_kernels_match_grid_sample_with_gradients(kind):
    aabb = 0.9
    g = torch.Generator().manual_seed(0)
    shape = (4, 7, 7, 7) if kind == "grid" else (3, 5, 7, 7)
    data = torch.randn(*shape, generator=g, dtype=torch.float64)
    points = _points(20000, aabb, 1)  # enough for a chunked (per-thread) backward
    points[:4] = torch.tensor([[-aabb, -aabb, -aabb], [aabb, aabb, aabb], [0, 0, 0], [aabb, 0, -aabb]])
    sample, reference = ((sample_grid, _reference_grid) if kind == "grid"
                         else (sample_triplane, _reference_triplane))
    a, b = data.clone().requires_grad_(True), data.clone().requires_grad_(True)
    out, ref = sample(a, points, aabb), reference(b, points, aabb)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    torch.set_num_threads(2)  # the backward's per-thread grids, summed
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-9)
    # The float32 path too (the one training uses).
    torch.testing.assert_close(sample(data.float(), points.float(), aabb), ref.float().detach(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sample", [sample_grid, sample_triplane])
def test_kernel_backward_gradcheck_float64(sample):
    g = torch.Generator().manual_seed(2)
    shape = (2, 4, 4, 4) if sample is sample_grid else (3, 2, 4, 4)
    data = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)
    points = _points(30, 1.0, 3)
    assert torch.autograd.gradcheck(lambda d: sample(d, points, 1.0), (data,))


def test_points_that_require_grad_take_grid_sample_and_get_gradients():
    data = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    points = _points(10, 1.0, 4, spread=0.9).requires_grad_(True)
    sample_triplane(data, points, 1.0).sum().backward()
    assert points.grad is not None and points.grad.abs().sum() > 0


def test_a_kernel_launch_leaves_torch_on_its_thread_count():
    """numba's OpenMP pool shares torch's runtime and resets its thread count on launch; the
    kernels put torch's back (else torch's ops ran on more threads and a seeded run changed)."""
    assert torch.get_num_threads() == 1  # the one_thread fixture
    grid = torch.randn(4, 8, 8, 8, requires_grad=True)
    sample_grid(grid, torch.rand(50000, 3) * 2 - 1, 1.0).sum().backward()
    assert torch.get_num_threads() == 1
