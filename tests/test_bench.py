"""`threedgen bench`'s step rows run for every guidance method and count the prior's work."""

import pytest

from benchmarks.run import bench_step
from threedgen.guidance import GUIDANCE
from threedgen.priors.diffusion import DiffusionPrior


@pytest.fixture(scope="module")
def prior():
    return DiffusionPrior.from_pretrained()


@pytest.mark.parametrize("method", sorted(GUIDANCE))
def test_step_row(prior, method, one_thread):
    parts = bench_step("gaussians", prior, repeats=1, method=method)
    assert all(parts[k] > 0 for k in ("render", "prior", "backward+optimiser"))
    minimum = {"sds": 8, "csds": 8, "asd": 12, "vsd": 16, "esd": 20, "ism": 12, "tsm": 16}[method]
    assert parts["evals"] >= minimum  # 4 views; ISM/TSM add up to 5 inversion hops per view
