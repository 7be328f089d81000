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


def test_sd21_shape_row_skips_cleanly_without_cuda(capsys):
    import torch

    from threedgen.cli import main

    assert main(["bench", "--prior", "sd21-shape"]) == 0
    out = capsys.readouterr().out
    assert ("skipped (no CUDA device)" in out) != torch.cuda.is_available()


def test_real_size_unet_configs_build_with_the_published_shapes():
    """The random-weight stand-ins have SD 2.1's and SDXL's parameter counts (865M, 2567M)."""
    import torch
    from diffusers import UNet2DConditionModel

    from benchmarks.real_priors import SD21, SDXL

    with torch.device("meta"):  # shapes only: no memory, no time
        counts = [sum(p.numel() for p in UNet2DConditionModel(**c).parameters()) / 1e6 for c in (SD21, SDXL)]
    assert abs(counts[0] - 865.9) < 1 and abs(counts[1] - 2567.5) < 1, counts
