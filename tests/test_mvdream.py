"""MVDream: a synthetic checkpoint in MVDream's own key layout (tiny shapes) converted and loaded
through the production loader; its camera embedding and its multi-view attention are in use."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from tests.helpers import REPO
from tests.test_fit import fit
from tests.tiny_priors import tiny_mvdream
from threedgen.cameras import CameraRanges, make_cameras, sample_cameras
from threedgen.config import PriorConfig
from threedgen.priors.base import PriorLoadError
from threedgen.registry import PRIOR_FAMILIES, load_prior
from threedgen.priors.mvdream import MultiViewAttnProcessor, convert_mvdream_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_mvdream(tmp_path_factory.mktemp("mvdream"))


@pytest.fixture(scope="module")
def prior(checkpoint):
    ckpt, base = checkpoint
    return load_prior(PriorConfig(name="mvdream", path=str(ckpt), base=str(base)))


def group_cameras():
    return make_cameras(15.0, [0.0, 90.0, 180.0, 270.0], 2.8, 30.0, 16)


def test_conversion_is_exact_and_complete(checkpoint, prior):
    ckpt, base = checkpoint
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(prior.unet.class_embedding.linear_1.weight,
                               state["model.diffusion_model.camera_embed.0.weight"])
    torch.testing.assert_close(prior.unet.conv_in.weight, state["model.diffusion_model.input_blocks.0.0.weight"])
    torch.testing.assert_close(prior.unet.time_embedding.linear_2.bias, state["model.diffusion_model.time_embed.2.bias"])
    assert prior.num_views == 4 and prior.camera_dim == 16
    procs = prior.unet.attn_processors
    assert all(isinstance(p, MultiViewAttnProcessor) == n.endswith("attn1.processor") for n, p in procs.items())
    assert any(isinstance(p, MultiViewAttnProcessor) for p in procs.values())


def test_the_converted_folder_is_detected_as_mvdream(prior):
    assert type(prior) is PRIOR_FAMILIES["mvdream"]  # by its multiview.json


def test_not_an_mvdream_file_is_refused(tmp_path, checkpoint):
    _, base = checkpoint
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "x.pt")
    with pytest.raises(PriorLoadError, match="not an MVDream / LDM checkpoint"):
        convert_mvdream_checkpoint(tmp_path / "x.pt", base, tmp_path / "out")


def _eps(prior, x_t, cams, t=500):
    text = prior.encode_prompts(["a red cube"] * len(x_t))
    return prior.predict_noise(x_t, torch.full((len(x_t),), t), text, prior.camera_condition(cams, len(x_t)))


def test_views_attend_jointly(prior):
    torch.manual_seed(0)
    x_t, cams = torch.randn(4, 4, 8, 8), group_cameras()
    eps = _eps(prior, x_t, cams)
    moved = x_t.clone()
    moved[0] += 0.5  # perturb view 0 only
    eps2 = _eps(prior, moved, cams)
    assert (eps2[1:] - eps[1:]).abs().max() > 1e-4  # the other three views see it
    # Control: with per-view attention the other views would not change.
    plain = UNet2DConditionModel.from_config(prior.unet.config)
    plain.load_state_dict(prior.unet.state_dict())
    own = prior.unet
    prior.unet = plain
    try:
        torch.testing.assert_close(_eps(prior, moved, cams)[1:], _eps(prior, x_t, cams)[1:])
    finally:
        prior.unet = own


def test_camera_embedding_is_used_and_views_are_equivariant(prior):
    torch.manual_seed(0)
    x_t, cams = torch.randn(4, 4, 8, 8), group_cameras()
    eps = _eps(prior, x_t, cams)
    swapped = cams[torch.tensor([1, 0, 2, 3])]  # the same images, two cameras exchanged
    assert (_eps(prior, x_t, swapped) - eps).abs().max() > 1e-4
    perm = torch.tensor([2, 0, 3, 1])  # permuting images and cameras together permutes the output
    torch.testing.assert_close(_eps(prior, x_t[perm], cams[perm]), eps[perm], rtol=1e-4, atol=1e-5)


def test_null_camera_is_the_camera(prior):
    cams = group_cameras()
    torch.testing.assert_close(prior.camera_condition(cams, 4, null=True), prior.camera_condition(cams, 4))
    c = prior.camera_condition(cams, 4).view(4, 4, 4)
    torch.testing.assert_close(c[:, :3, 3].norm(dim=-1), torch.ones(4))  # unit translation


def test_sampler_makes_groups_of_four_views_90_degrees_apart():
    cams = sample_cameras(8, CameraRanges(), 16, torch.Generator().manual_seed(0), views_per_group=4)
    for g in range(2):
        group = cams[g * 4:(g + 1) * 4]
        assert torch.allclose(group.elevation, group.elevation[0]) and torch.allclose(group.distance, group.distance[0])
        steps = (group.azimuth.roll(-1) - group.azimuth) % 360
        torch.testing.assert_close(steps, torch.full((4,), 90.0))
    assert not torch.allclose(cams.elevation[0], cams.elevation[4])


def test_single_views_are_stratified_over_the_azimuth_range():
    """One azimuth in each 1/batch of the range (the whole circle by default, as the priors are
    trained), in a random order."""
    for ranges, (lo, hi) in ((CameraRanges(), (-180.0, 180.0)), (CameraRanges(azimuth=(-15.0, 15.0)), (-15.0, 15.0))):
        cams = sample_cameras(6, ranges, 16, torch.Generator().manual_seed(0))
        sector = ((cams.azimuth - lo) / ((hi - lo) / 6)).floor()
        assert sorted(sector.tolist()) == list(range(6)) and sector.tolist() != list(range(6))


@pytest.mark.parametrize("recipe, extra", [("sds", []), ("sds", ["system.guidance.x0_reconstruction=true"]),
                                           ("vsd", [])], ids=["sds", "x0-recon", "vsd"])
def test_two_mvdream_guidance_steps_from_the_cli(tmp_path, checkpoint, recipe, extra):
    ckpt, base = checkpoint
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", "system.prior.name=mvdream",
              f"system.prior.path={ckpt}", f"system.prior.base={base}", "system.camera.views_per_group=4",
              *extra, config=str(REPO / "configs" / f"gaussians-{recipe}.yaml"))
    assert (run / "ckpts" / "last.ckpt").is_file()


def test_views_per_group_must_match_the_prior(tmp_path, checkpoint, capsys):
    from threedgen.cli import main

    ckpt, base = checkpoint
    code = main(["fit", "--config", str(REPO / "configs" / "gaussians-sds.yaml"), "prompt=a red cube",
                 f"output_dir={tmp_path}", "system.prior.name=mvdream", f"system.prior.path={ckpt}",
                 f"system.prior.base={base}"])
    assert code == 2 and "views_per_group" in capsys.readouterr().err
