import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel

from threedgen.cameras import make_cameras
from threedgen.priors.base import PriorLoadError, PromptError
from threedgen import world
from threedgen.world.classifier import WorldClassifier
from threedgen.priors.diffusion import EMBEDDED_PATH
from threedgen.registry import prior_from_pretrained


@pytest.fixture(scope="module")
def prior():
    return prior_from_pretrained(EMBEDDED_PATH)


def test_loads_like_stable_diffusion(prior, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet = UNet2DConditionModel.from_pretrained(EMBEDDED_PATH, subfolder="unet")
    assert unet.config.class_embed_type == "projection"
    assert prior.resolution == 32 and prior.has_camera
    assert not any(p.requires_grad for p in prior.parameters())
    size = sum(f.stat().st_size for f in EMBEDDED_PATH.rglob("*.safetensors"))
    assert size <= 25 * 2**20


def test_prompt_outside_vocabulary(prior):
    with pytest.raises(PromptError) as e:
        prior.encode_prompts(["a pink cube"])
    msg = str(e.value)
    assert "'pink'" in msg and "red" in msg and "torus" in msg and "\n" not in msg


def test_camera_condition(prior):
    cams = make_cameras([0.0, 30.0], [0.0, 90.0], 2.8, 30.0, 32)
    c = prior.camera_condition(cams, 2)
    assert c.shape == (2, 10) and (c[:, -1] == 1).all()
    assert (prior.camera_condition(None, 3) == 0).all()


def test_encode_decode_roundtrip(prior):
    rgb = torch.rand(2, 3, 32, 32)
    x = prior.encode_images(rgb)
    assert x.shape == (2, 12, 16, 16)
    assert torch.allclose(prior.decode(x), rgb, atol=1e-6)


def test_one_step_denoising_shows_the_prompt(prior):
    """The denoiser's guided x0 estimate from a heavily noised world render (t = 700, alpha_bar
    0.2, the regime SDS uses) is classified as the prompted shape and colour, for every combination
    including the held-out ones; with a wrong prompt, the estimate follows the prompt's colour."""
    from threedgen.priors.cfg import Conditioning, guided_noise

    classifier = WorldClassifier.from_pretrained(EMBEDDED_PATH / "classifier")
    combos = [(s, c) for s in world.SHAPES for c in world.COLOURS]
    cams = make_cameras(25.0, torch.arange(len(combos)) * 37.0, 2.8, 30.0, 32)
    truth = world.render([s for s, _ in combos], [c for _, c in combos], cams).rgb

    def denoise(prompts):
        text = prior.encode_prompts(prompts)
        cond = Conditioning(text, prior.encode_prompts([""]).expand_as(text),
                            prior.camera_condition(cams, len(prompts)), prior.camera_condition(None, len(prompts)))
        g = torch.Generator().manual_seed(0)
        x0 = prior.encode_images(truth)
        a = prior.alphas_cumprod[700]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            eps = guided_noise(prior, xt, torch.full((len(prompts),), 700), cond, 3.0).eps
        return classifier.predict(prior.decode((xt - (1 - a).sqrt() * eps) / a.sqrt()).clamp(0, 1))

    shapes, colours = denoise([world.prompt_for(s, c) for s, c in combos])
    right = sum(s == ps and c == pc for s, c, (ps, pc) in zip(shapes, colours, combos))
    assert right >= 0.9 * len(combos), list(zip(shapes, colours))
    # Control: same noisy images, the colour word shifted by one: the estimate follows the text.
    names = list(world.COLOURS)
    shifted = [names[(names.index(c) + 1) % len(names)] for _, c in combos]
    _, colours = denoise([world.prompt_for(s, c) for (s, _), c in zip(combos, shifted)])
    assert sum(c == w for c, w in zip(colours, shifted)) >= 0.5 * len(combos)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_broken_weights_raise(tmp_path, damage):
    broken = tmp_path / "prior"
    shutil.copytree(EMBEDDED_PATH, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PriorLoadError, match="unet"):
        prior_from_pretrained(broken)


def test_ddim_samples_show_the_prompt(prior):
    """Full DDIM sampling (25 steps, truncated start at t = 850 from the world's mean image, CFG
    7.5): the classifier reads the prompted shape and colour on nearly every sample, held-out
    combinations (blue cone, green mug) included."""
    from threedgen.world.check import _conditioning, world_mean_latent
    from threedgen.priors.sampling import ddim_sample

    classifier = WorldClassifier.from_pretrained(EMBEDDED_PATH / "classifier")
    combos = [(s, c) for s in world.SHAPES for c in ("red", "blue", "green")]
    prompts = [world.prompt_for(s, c) for s, c in combos]
    cams = make_cameras(20.0, torch.arange(len(combos)) * 50.0, 2.8, 30.0, 32)
    samples = ddim_sample(prior, _conditioning(prior, prompts, cams), 7.5, 25,
                          torch.Generator().manual_seed(0), t_start=850,
                          mean_latent=world_mean_latent(prior, n=96))
    assert samples.shape == (len(combos), 3, 32, 32)
    shapes, colours = classifier.predict(samples)
    right = sum(s == ps and c == pc for s, c, (ps, pc) in zip(shapes, colours, combos))
    assert right >= 0.8 * len(combos), list(zip(shapes, colours))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_sample_reaches_the_data_point_whatever_the_unet_predicts(prediction_type):
    """A prior whose (converted) noise prediction is exact for one data point x0: DDIM must land
    on x0 for an epsilon- and a v-predicting scheduler config alike (predict_noise always
    returns epsilon, so the sampler must not re-read it as v)."""
    from diffusers import DDPMScheduler

    from threedgen.priors.cfg import Conditioning
    from threedgen.priors.sampling import ddim_sample

    x0 = torch.full((1, 3, 4, 4), 0.8)

    class Perfect:
        video, resolution, world = False, 4, {}
        scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
        alphas_cumprod = scheduler.alphas_cumprod

        def encode_images(self, rgb):
            return rgb

        def decode(self, x):
            return x

        def predict_noise(self, x_t, t, text, camera):
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    cond = Conditioning(torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), None, None)
    out = ddim_sample(Perfect(), cond, 3.0, 5, torch.Generator().manual_seed(0))
    assert (out - x0).abs().max() < 0.05, (out - x0).abs().max()  # DDIM stops at t = 0, not at abar = 1


def test_check_prior_scores_a_perfect_sampler_fully_on_the_decidable_tests(tmp_path, monkeypatch, capsys):
    """``threedgen check-prior`` end to end with a sampler that returns the true render of each
    prompt at its camera: every shape and colour is right and every camera test that can be
    decided is passed; the ties (the sphere's 20 elevation tests among them, where the two true
    silhouettes are the same) are left out of "decidable" and count as misses in "all"."""
    import json

    from threedgen.cli import main
    from threedgen.world import check

    names = {world.prompt_for(s, c): (s, c) for s in world.SHAPES for c in world.COLOURS}

    def true_renders(prior, prompts, cams, *args, **kwargs):
        shapes, colours = zip(*(names[p] for p in prompts))
        return world.render(list(shapes), list(colours), cams).rgb

    monkeypatch.setattr(check, "_sample", true_renders)
    assert main(["check-prior", "--views", "1", "--steps", "2", "--grid", str(tmp_path / "grid.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seen"]["both"] == result["held_out"]["both"] == 1.0
    camera = result["camera"]
    assert camera["decidable"] == 1.0 and camera["ties"] >= 20 and camera["all"] < 1.0
    assert camera["elevation_by_shape"]["sphere"] == 0.0 and camera["elevation_by_shape"]["torus"] == 1.0
    assert (tmp_path / "grid.png").is_file()


def test_image_prior_training_continues_from_a_prior_folder(tmp_path):
    """train_diffusion with init_from starts from that folder's weights: one step at learning
    rate 0 (the warmup's first step) saves them unchanged (from scratch it would save a fresh
    random UNet)."""
    from threedgen.world.train import PriorTrainConfig, train_diffusion

    cfg = PriorTrainConfig(steps=1, warmup=10, batch_size=2, renders_per_shape=2,
                           init_from=str(EMBEDDED_PATH), max_loss_weight=5.0)
    train_diffusion(tmp_path / "ft", cfg)
    before = UNet2DConditionModel.from_pretrained(EMBEDDED_PATH / "unet").state_dict()
    after = UNet2DConditionModel.from_pretrained(tmp_path / "ft" / "unet").state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert prior_from_pretrained(tmp_path / "ft").world["training"]["max_loss_weight"] == 5.0


@pytest.mark.parametrize("source", ["missing", "video"])
def test_image_prior_init_from_a_wrong_folder_is_a_one_line_error(tmp_path, capsys, source):
    from threedgen.cli import main
    from threedgen.priors.diffusion import EMBEDDED_VIDEO_PATH

    folder = tmp_path / "not-here" if source == "missing" else EMBEDDED_VIDEO_PATH
    assert main(["train-prior", "--init-from", str(folder), "--out", str(tmp_path / "out"), "--steps", "1",
                 "--part", "diffusion"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err
