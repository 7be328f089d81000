import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel

from threedgen.cameras import make_cameras
from threedgen.priors.base import PriorLoadError, PromptError
from threedgen.priors.embedded import world
from threedgen.priors.embedded.classifier import WorldClassifier
from threedgen.priors.pixel import EMBEDDED_PATH, PixelPrior
from threedgen.prompts import PromptProcessor
from threedgen.priors.sampling import ddim_sample


@pytest.fixture(scope="module")
def prior():
    return PixelPrior.from_pretrained(EMBEDDED_PATH)


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


def test_samples_show_the_prompt(prior):
    """A small sampling check: DDIM samples of seen prompts are classified correctly."""
    classifier = WorldClassifier.from_pretrained(EMBEDDED_PATH / "classifier")
    prompts = [("cube", "red"), ("torus", "blue"), ("cone", "green"), ("mug", "yellow")]
    cams = make_cameras(25.0, [30.0, 120.0, 210.0, 300.0], 2.8, 30.0, 32)
    conds = [PromptProcessor(prior, world.prompt_for(s, c)).conditioning(cams[i:i + 1])
             for i, (s, c) in enumerate(prompts)]
    from threedgen.guidance.base import Conditioning
    cond = Conditioning(*(torch.cat([getattr(c, f) for c in conds]) for f in
                          ("text", "uncond", "camera", "null_camera")))
    samples = ddim_sample(prior, cond, guidance_scale=3.0, steps=25, generator=torch.Generator().manual_seed(0))
    shapes, colours = classifier.predict(samples)
    right = sum(s == ps and c == pc for s, c, (ps, pc) in zip(shapes, colours, prompts))
    assert right >= 3, (shapes, colours)


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
        PixelPrior.from_pretrained(broken)
