"""End to end: every guidance method recovers the prompted object, on Gaussians and on NeRF.

Full sweep (every method but SDS x 2 representations x 3 prompts; SDS is in test_sweep.py):
    python -m pytest -m slow -s tests/test_guidance_sweep.py
The cases marked `ci`, one per method, run in the default suite too.
"""

import json

import pytest

from tests.helpers import REPO
from tests.test_fit import fit
from threedgen.registry import GUIDANCE
from threedgen.world.metrics import passes

METHODS = [m for m in GUIDANCE if m != "sds"]  # every method in the table: a new one joins the sweep
PROMPTS = ["a red cube", "a green cone", "an orange cylinder"]
# One case per method that passed the full sweep (2026-11-23). That sweep's failures (cubes
# rounded into spheres by Gaussians TSM, ASD and C-SDS and NeRF ISM and TSM) led to the recipe
# changes in docs/guidance.md ("Recipe changes").
CI = {("gaussians", "vsd", "a red cube"), ("gaussians", "esd", "a green cone"),
      ("gaussians", "ism", "an orange cylinder"), ("gaussians", "tsm", "an orange cylinder"),
      ("gaussians", "asd", "a green cone"), ("gaussians", "csds", "an orange cylinder")}
CASES = [pytest.param(rep, m, p, marks=[pytest.mark.slow] + ([pytest.mark.ci] if (rep, m, p) in CI else []),
                      id=f"{rep}-{m}-{p.split()[-1]}")
         for rep in ["gaussians", "nerf"] for m in METHODS for p in PROMPTS]


@pytest.mark.parametrize("rep, method, prompt", CASES)
def test_method_recovers_the_prompt(tmp_path, sweep_results, rep, method, prompt):
    run = fit(tmp_path, f"prompt={prompt}", config=str(REPO / "configs" / f"{rep}-{method}.yaml"))
    m = json.loads((run / "metrics.json").read_text())
    sweep_results.append({"representation": f"{rep} {method}", **m})
    assert passes(m, min_views=3, min_iou=0.7), m
