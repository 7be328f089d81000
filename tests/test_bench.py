"""`threedgen bench`'s step rows run for every guidance method and count the prior's work."""

import pytest

from threedgen.benchmarks.run import bench_step
from threedgen.registry import GUIDANCE
from threedgen.registry import prior_from_pretrained


@pytest.fixture(scope="module")
def prior():
    return prior_from_pretrained()


@pytest.mark.parametrize("method", sorted(GUIDANCE))
def test_step_row(prior, method, one_thread):
    parts = bench_step("gaussians", prior, repeats=1, method=method)
    assert all(parts[k] > 0 for k in ("render", "prior", "backward+optimiser"))
    minimum = {"asd": 12, "vsd": 16, "esd": 20, "ism": 12, "tsm": 16}.get(method, 8)  # 8: a CFG pair per view
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

    from threedgen.benchmarks.real_priors import SD21, SDXL

    with torch.device("meta"):  # shapes only: no memory, no time
        counts = [sum(p.numel() for p in UNet2DConditionModel(**c).parameters()) / 1e6 for c in (SD21, SDXL)]
    assert abs(counts[0] - 865.9) < 1 and abs(counts[1] - 2567.5) < 1, counts


def test_gpu_bench_skips_cleanly_without_cuda(capsys):
    import torch

    from threedgen.cli import main

    assert main(["bench", "--gpu"]) == 0
    out = capsys.readouterr().out
    assert ("skipped (no CUDA device)" in out) != torch.cuda.is_available()


def test_gpu_bench_row_on_the_cpu(capsys, one_thread):
    """The GPU bench's machinery, dry-run on the CPU with the embedded recipe: one row whose parts
    add up to no more than the step, against a CFG pair of the step's 4 views."""
    from threedgen.benchmarks.gpu_step import main

    assert main(["--device", "cpu", "--recipes", "gaussians-sds", "--repeats", "1"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| gaussians-sds")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    step, render, encode, prior, backward, floor, ratio = map(float, cells[3:10])
    assert 0 < render + encode + prior <= step and backward >= 0 and floor > 0
    # the table prints seconds to 3 decimals and the ratio to 2, from the unrounded times
    assert abs(ratio - step / floor) <= 0.005 + 0.0005 * (1 + step / floor) / floor
    assert cells[11] == "8"  # a CFG pair of 4 views per step


def test_published_shapes_of_the_other_parts():
    """The random-weight VAE and text encoders have the published sizes: SD's VAE 83.7M, OpenCLIP-H's
    text tower 340M (SD 2.x), CLIP-L's 123M and OpenCLIP-bigG's with projection 695M (SDXL)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from threedgen.benchmarks.real_priors import TEXT_ENCODERS, VAE

    def millions(model):
        return round(sum(p.numel() for p in model.parameters()) / 1e6, 1)

    with torch.device("meta"):
        assert millions(AutoencoderKL(**VAE)) == 83.7
        text = lambda name, cls=CLIPTextModel: cls(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,  # noqa: E731
                                                                  **TEXT_ENCODERS[name]))
        assert millions(text("openclip-h")) == 340.4
        assert millions(text("clip-l")) == 123.1
        assert millions(text("openclip-bigg", CLIPTextModelWithProjection)) == 694.7
