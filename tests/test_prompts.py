"""Prompt processing: view-dependent prompts, negative prompts, Perp-Neg weights, the disk cache."""

import pytest
import torch

from threedgen.cameras import make_cameras
from threedgen.config import PromptConfig
from threedgen.schedules import ConfigError, Ramp
from threedgen.priors.base import PromptError
from threedgen.registry import prior_from_pretrained
from threedgen.prompts import VIEWS, PromptProcessor, view_index


class StubPrior:
    """An open-vocabulary prior without camera input whose text embedding names its prompt."""

    text_encoder_id = "stub-encoder"
    alphas_cumprod = torch.ones(10)
    has_camera = False

    def __init__(self):
        self.encoded: list[str] = []

    def check_prompt(self, prompt):
        if "forbidden" in prompt:
            raise PromptError(f"prompt {prompt!r}: unknown word 'forbidden'")

    def encode_prompts(self, prompts):
        for p in prompts:
            self.check_prompt(p)
        self.encoded += prompts
        return torch.stack([torch.full((2, 3), float(hash(p) % 1000)) for p in prompts])

    def camera_condition(self, cameras, batch, null=False):
        return None


def emb(p):
    return torch.full((2, 3), float(hash(p) % 1000))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEDGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


CAMS = make_cameras([0.0, 0.0, 0.0, 0.0, 80.0], [10.0, 90.0, 180.0, -170.0, 0.0], 2.8, 30.0, 16)


def test_view_index_by_azimuth_and_elevation():
    assert [VIEWS[i] for i in view_index(CAMS, PromptConfig(), 0)] == ["front", "side", "back", "back", "overhead"]
    narrow = PromptConfig(front_threshold=Ramp(45.0, 5.0, 10))  # schedulable
    assert VIEWS[view_index(CAMS[:1], narrow, 0)[0]] == "front"
    assert VIEWS[view_index(CAMS[:1], narrow, 10)[0]] == "side"


def test_view_dependent_prompts_per_view():
    pp = PromptProcessor(StubPrior(), "a red cube", cfg=PromptConfig())  # no camera input: on
    cond = pp.conditioning(CAMS)
    for i, view in enumerate(["front", "side", "back", "back", "overhead"]):
        assert torch.equal(cond.text[i], emb(f"a red cube, {view} view"))
    assert torch.equal(cond.null_text[0], emb("")) and cond.negative is None and cond.perp_neg == ()
    assert torch.equal(cond.pose, CAMS.c2w.reshape(5, 16))
    off = PromptProcessor(StubPrior(), "a red cube", cfg=PromptConfig(view_dependent=False)).conditioning(CAMS)
    assert all(torch.equal(t, emb("a red cube")) for t in off.text)


def test_negative_prompt_is_the_unconditional_branch():
    cond = PromptProcessor(StubPrior(), "a red cube", "blurry").conditioning(CAMS)
    assert torch.equal(cond.negative[0], emb("blurry")) and torch.equal(cond.uncond[0], emb("blurry"))
    assert torch.equal(cond.null_text[0], emb(""))


def test_perp_neg_pushes_away_from_the_other_side():
    cfg = PromptConfig(perp_neg=True, perp_neg_weight=Ramp(2.0, 1.0, 100))
    cond = PromptProcessor(StubPrior(), "a red cube", cfg=cfg).conditioning(CAMS, step=50)
    (front_text, front_w), (back_text, back_w) = cond.perp_neg
    assert torch.equal(front_text[0], emb("a red cube, front view"))
    assert torch.equal(back_text[0], emb("a red cube, back view"))
    # views: front, side, back, back, overhead; weight 1.5 at step 50
    assert front_w.tolist() == [0.0, 1.5, 1.5, 1.5, 0.0]
    assert back_w.tolist() == [1.5, 0.0, 0.0, 0.0, 0.0]


def test_camera_conditioned_prior_has_no_view_prompts_and_refuses_perp_neg():
    prior = prior_from_pretrained()
    cond = PromptProcessor(prior, "a red cube").conditioning(CAMS)
    assert torch.equal(cond.text[0], cond.text[2])  # no view suffix
    with pytest.raises(ConfigError, match="perp_neg: needs view-dependent"):
        PromptProcessor(prior, "a red cube", cfg=PromptConfig(perp_neg=True))
    with pytest.raises(PromptError, match="'front', 'view'"):  # forced on: the closed vocabulary says no
        PromptProcessor(prior, "a red cube", cfg=PromptConfig(view_dependent=True))


def test_embeddings_are_cached_on_disk_by_model_and_prompt(cache):
    first = StubPrior()
    PromptProcessor(first, "a red cube", cfg=PromptConfig(view_dependent=False))
    assert first.encoded == ["a red cube", ""]
    assert len(list(cache.glob("text-embeddings/*.pt"))) == 2
    again = StubPrior()
    cond = PromptProcessor(again, "a red cube", cfg=PromptConfig(view_dependent=False)).conditioning(CAMS)
    assert again.encoded == [] and torch.equal(cond.text[0], emb("a red cube"))  # read from disk
    other = StubPrior()
    other.text_encoder_id = "another-encoder"
    PromptProcessor(other, "a red cube", cfg=PromptConfig(view_dependent=False))
    assert other.encoded == ["a red cube", ""]  # a different model does not share entries
    uncached = StubPrior()
    PromptProcessor(uncached, "a red cube", cfg=PromptConfig(view_dependent=False, cache=False))
    assert uncached.encoded == ["a red cube", ""]
    with pytest.raises(PromptError):  # a cached lookup still checks the prompt
        PromptProcessor(StubPrior(), "a forbidden cube", cfg=PromptConfig(view_dependent=False))


def test_real_prior_cache_matches_fresh_encoding():
    prior = prior_from_pretrained()
    fresh = prior.encode_prompts(["a blue torus"])
    PromptProcessor(prior, "a blue torus")
    cached = PromptProcessor(prior, "a blue torus").text
    torch.testing.assert_close(cached, fresh)
