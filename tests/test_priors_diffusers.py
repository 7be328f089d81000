"""Real-checkpoint loading, tested with tiny models of every family saved locally (no downloads):
Stable Diffusion 1.x/2.x (epsilon and v), SDXL, IF-style pixel models; and the offline errors."""

import time

import pytest
import torch

from tests.helpers import REPO
from tests.test_fit import fit
from tests.tiny_priors import FAMILIES, tiny_sd
from threedgen.cli import main
from threedgen.config import PriorConfig, PromptConfig
from threedgen.priors.base import Prior, PriorLoadError
from threedgen.priors.diffusion import EMBEDDED_PATH, EMBEDDED_VIDEO_PATH
from threedgen.registry import PRIOR_FAMILIES, load_prior, prior_family, prior_from_pretrained


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    out = {name: build(root / name) for name, build in FAMILIES.items()}
    out["sd-v"] = tiny_sd(root / "sd-v", prediction_type="v_prediction")
    return out


def load(folder, **kw):
    return load_prior(PriorConfig(name="diffusers", path=str(folder), **kw))


def test_each_checkpoint_is_detected_as_its_family(folders):
    """The registry's table picks the adapter from the folder's configs (MVDream: test_mvdream)."""
    want = {"sd": "sd", "sd-v": "sd", "sdxl": "sdxl", "pixel": "pixel", "video": "video"}
    assert {k: prior_family(folders[k]) for k in want} == {k: PRIOR_FAMILIES[v] for k, v in want.items()}
    assert prior_family(EMBEDDED_PATH) is PRIOR_FAMILIES["embedded"]
    assert prior_family(EMBEDDED_VIDEO_PATH) is PRIOR_FAMILIES["embedded_video"]


def test_every_family_has_every_member_of_the_protocol(folders):
    members = {n for n in vars(Prior) if not n.startswith("_")} | set(Prior.__annotations__)
    priors = [load(folders[k]) for k in ("sd", "sdxl", "pixel", "video")]
    priors += [prior_from_pretrained(EMBEDDED_PATH), prior_from_pretrained(EMBEDDED_VIDEO_PATH)]
    assert {type(p).__name__: sorted(m for m in members if not hasattr(p, m)) for p in priors} == \
        {type(p).__name__: [] for p in priors}


@pytest.mark.parametrize("family, resolution, channels, text_shape", [
    ("sd", 16, 4, (2, 8, 32)), ("sd-v", 16, 4, (2, 8, 32)), ("sdxl", 16, 4, (2, 9, 64)), ("pixel", 16, 3, (2, 8, 32))])
def test_each_family_loads_through_the_production_loader(folders, family, resolution, channels, text_shape):
    prior = load(folders[family])
    assert prior.resolution == resolution and prior.camera_condition(None, 2) is None
    text = prior.encode_prompts(["a red cube", ""])
    assert text.shape == text_shape
    rgb = torch.rand(2, 3, resolution, resolution, requires_grad=True)
    x = prior.encode_images(rgb)
    assert x.shape == (2, channels, resolution // prior.factor, resolution // prior.factor)
    x.sum().backward()
    assert rgb.grad.abs().sum() > 0  # renders are encoded with gradients
    eps = prior.predict_noise(x.detach(), torch.tensor([10, 900]), text, None)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert prior.decode(x.detach()).shape == rgb.shape


def test_video_prior_encodes_clips_per_frame_and_mixes_time(folders):
    prior = load(folders["video"])
    assert prior.video and prior.resolution == 16
    clip = torch.rand(2, 3, 4, 16, 16, requires_grad=True)  # [B, 3, T, H, W]
    x = prior.encode_images(clip)
    assert x.shape == (2, 4, 4, 8, 8)  # [B, C, T, h, w]
    frame = prior.encode_images(clip[:, :, 1])  # the same VAE, one frame at a time
    torch.testing.assert_close(x[:, :, 1], frame)
    assert prior.decode(x.detach()).shape == clip.shape
    text = prior.encode_prompts(["a red cube", "a blue sphere"])
    t = torch.tensor([300, 600])  # one timestep per clip
    x_t = torch.randn(2, 4, 4, 8, 8)
    eps = prior.predict_noise(x_t, t, text, None)
    moved = x_t.clone()
    moved[:, :, 0] += 1.0  # change frame 0 only
    eps2 = prior.predict_noise(moved, t, text, None)
    assert (eps2[:, :, 3] - eps[:, :, 3]).abs().max() > 1e-4  # frame 3 sees it: temporal layers


@pytest.mark.parametrize("method", ["sds", "asd"])
def test_two_guidance_steps_on_a_clip(folders, method):
    from threedgen.registry import GUIDANCE
    from threedgen.prompts import PromptProcessor

    prior = load(folders["video"])
    guidance = GUIDANCE[method](GUIDANCE[method].Config(), prior)
    cond = PromptProcessor(prior, "a red cube", cfg=PromptConfig(view_dependent=False)).conditioning(None, batch=2)
    clip = torch.full((2, 3, 4, 32, 32), 0.5, requires_grad=True)  # renders larger than the prior: resized
    opt = torch.optim.Adam([clip], lr=0.05)
    for step in range(2):
        out = guidance(clip, cond, step, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert out.timesteps.shape == (2,)  # one t per clip
        assert clip.grad.abs().amin(dim=(0, 1, 3, 4)).gt(0).all()  # every frame gets a gradient
    assert (clip - 0.5).abs().max() > 0


def test_v_prediction_is_converted_to_eps(folders):
    prior = load(folders["sd-v"])
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    text = prior.encode_prompts(["a red cube", "a blue sphere"])
    v = prior.unet(x_t, t, text).sample
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(prior.predict_noise(x_t, t, text, None), a.sqrt() * v + (1 - a).sqrt() * x_t)


def test_sdxl_pooled_embedding_and_time_ids(folders, monkeypatch):
    prior = load(folders["sdxl"])
    text = prior.encode_prompts(["a red cube", "a blue sphere", ""])
    te2, tok2 = prior.text_encoders[1], prior.tokenizers[1]
    ids = tok2(["a red cube"], padding="max_length", max_length=tok2.model_max_length, return_tensors="pt")
    pooled = te2(ids.input_ids).text_embeds[0]
    torch.testing.assert_close(text[0, -1, :32], pooled)  # the packed row: pooled, zero-padded
    assert torch.all(text[:, -1, 32:] == 0)
    seen = {}
    forward = prior.unet.forward

    def spy(*args, **kw):
        seen.update(kw["added_cond_kwargs"], hidden=args[2])
        return forward(*args, **kw)

    monkeypatch.setattr(prior.unet, "forward", spy)
    prior.predict_noise(torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3]), text, None)
    assert seen["text_embeds"].shape == (3, 32) and seen["time_ids"].shape == (3, 6)
    assert seen["time_ids"][0].tolist() == [16, 16, 0, 0, 16, 16]
    assert seen["hidden"].shape == (3, 8, 64)  # both encoders' penultimate layers, concatenated


def test_pixel_model_drops_its_variance_channels(folders):
    prior = load(folders["pixel"])
    assert prior.unet.config.out_channels == 6
    eps = prior.predict_noise(torch.randn(1, 3, 16, 16), torch.tensor([5]), prior.encode_prompts(["a cube"]), None)
    assert eps.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("family, method", [("sd", "sds"), ("sd", "vsd"), ("sd-v", "ism"), ("sdxl", "sds"),
                                            ("sdxl", "vsd"), ("pixel", "sds"), ("pixel", "asd")])
def test_two_guidance_steps_from_the_cli(tmp_path, folders, family, method):
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", "system.prior.name=diffusers",
              f"system.prior.path={folders[family]}", config=str(REPO / "configs" / f"gaussians-{method}.yaml"))
    assert (run / "ckpts" / "last.ckpt").is_file()


def test_offline_hub_id_fails_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t0 = time.time()
    with pytest.raises(PriorLoadError) as e:
        load("acme/no-such-model")
    assert time.time() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "'acme/no-such-model'" in msg and "hf download acme/no-such-model" in msg
    code = main(["fit", "--config", str(REPO / "configs" / "gaussians-sds.yaml"), "prompt=a red cube",
                 f"output_dir={tmp_path}", "system.prior.name=diffusers", "system.prior.path=acme/no-such-model"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "acme/no-such-model" in err and "Traceback" not in err


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("threedgen.priors.diffusion.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(PriorLoadError, match="the hub cannot be reached"):
        load("acme/no-such-model")


def test_bad_local_path_and_cuda_only_options(tmp_path):
    with pytest.raises(PriorLoadError, match="no such folder"):
        load(tmp_path / "missing")
    if not torch.cuda.is_available():
        with pytest.raises(PriorLoadError, match="dtype float16 needs a CUDA device"):
            load(tmp_path, dtype="float16")


def test_memory_options_reach_the_models(folders):
    """attention_slicing, vae_tiling and vae_slicing are applied to the loaded UNet and VAE."""
    prior = load_prior(PriorConfig(name="diffusers", path=str(folders["sd"]), vae_tiling=True, vae_slicing=True,
                                   attention_slicing=True))
    assert prior.vae.use_tiling and prior.vae.use_slicing
    plain = load_prior(PriorConfig(name="diffusers", path=str(folders["sd"])))
    assert not plain.vae.use_tiling and not plain.vae.use_slicing
    sliced = {type(p).__name__ for p in prior.unet.attn_processors.values()}
    assert sliced != {type(p).__name__ for p in plain.unet.attn_processors.values()}, sliced
