"""Every recipe in configs/ loads, validates and runs two real steps on CPU.

Recipes for real checkpoints (a hub id in system.prior.path) run against a tiny stand-in of the
same family, in float32 at the stand-in's own resolution: STAND_INS must name each such checkpoint.
4D recipes run against an untrained video prior in the embedded one's layout.
"""

import json

import pytest

from tests.helpers import REPO
from tests.test_fit import fit
from tests.tiny_priors import tiny_mvdream, tiny_sd, tiny_sdxl, untrained_video_prior
from threedgen import config as C
from threedgen.registry import GUIDANCE

RECIPES = sorted((REPO / "configs").glob("*.yaml"))
STAND_INS = {"stabilityai/stable-diffusion-2-1-base": tiny_sd, "stabilityai/stable-diffusion-xl-base-1.0": tiny_sdxl,
             "MVDream/MVDream/sd-v2.1-base-4view.pt": tiny_mvdream}


def test_recipes_exist():
    names = {r.stem for r in RECIPES}
    assert {f"{rep}-{m}" for rep in ("gaussians", "nerf") for m in GUIDANCE} <= names  # every method on both
    assert {"dreamfusion-sd", "prolificdreamer", "luciddreamer", "dreamer-xl", "mvdream-sds"} <= names


def stand_in_overrides(recipe, tmp_path) -> list[str]:
    """Overrides that run ``recipe`` on CPU: real checkpoints replaced by tiny stand-ins of the
    same family (float32, their own resolution), 4D recipes on an untrained video prior."""
    overrides = []
    cfg = C.load([recipe], ["prompt=a red cube"])
    prior = cfg.system.prior
    if prior.name != "embedded":
        assert prior.path in STAND_INS, f"{recipe.name}: add a tiny stand-in for {prior.path}"
        stand_in = STAND_INS[prior.path](tmp_path / "prior")
        if prior.name == "mvdream":
            stand_in, base = stand_in
            overrides.append(f"system.prior.base={base}")
        overrides += [f"system.prior.path={stand_in}", "system.prior.dtype=float32", "system.prior.resolution=null",
                      "system.camera.resolution=32"]
    if cfg.system.video is not None:  # 4D: the embedded video prior's layout and vocabulary, untrained weights
        overrides += ["system.video.prior.name=diffusers", f"system.video.prior.path={untrained_video_prior(tmp_path / 'video')}"]
    return overrides


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_two_steps(tmp_path, recipe):
    overrides = ["prompt=a red cube", "trainer.max_steps=2", *stand_in_overrides(recipe, tmp_path)]
    run = fit(tmp_path, *overrides, config=str(recipe))
    assert run.parent.name == recipe.stem
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
