"""Every recipe in configs/ loads, validates and runs two real steps on CPU."""

import json

import pytest

from tests.helpers import REPO
from tests.test_fit import fit

RECIPES = sorted((REPO / "configs").glob("*.yaml"))


def test_recipes_exist():
    assert {"gaussians-sds.yaml", "nerf-sds.yaml"} <= {r.name for r in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_two_steps(tmp_path, recipe):
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", config=str(recipe))
    assert run.parent.name == recipe.stem
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
