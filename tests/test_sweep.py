"""End-to-end quality: each representation + SDS recovers the prompted object.

Full sweep (prints a table):  python -m pytest -m slow -s
(this file with tests/test_guidance_sweep.py: 55 minutes on 2 cores, 2026-12-01; this file alone
after the numba CPU kernels: 15 minutes, 2026-12-02)
The cases marked `ci` run in the default suite too.
Known failures: none. On 2026-12-05 the sweep passed 19 of 22; the Gaussians torus (white
Gaussians) and the NeRF cylinder and mug were fixed in their recipes that day and rerun
(`-k "gaussians and prompt_is_recovered"`, `-k "nerf and prompt_is_recovered"`: 12 of 12).
"""

import json

import numpy as np
import pytest

from tests.test_fit import fit
from threedgen.export.axes import from_file
from threedgen.world.metrics import passes

PROMPTS = ["a red cube", "a green cone", "a blue torus", "an orange cylinder", "a yellow sphere",
           "a purple mug"]
# A mesh deformed from a sphere keeps genus 0: no torus or mug (the two-stage run below covers
# other topologies through an isosurface).
SWEEP = {"gaussians": PROMPTS, "nerf": PROMPTS, "triplane": PROMPTS, "mesh": PROMPTS[:2] + PROMPTS[3:5]}
CI = {("gaussians", "a red cube"), ("nerf", "a green cone"), ("mesh", "a red cube")}
CASES = [pytest.param(rep, p, marks=[pytest.mark.slow] + ([pytest.mark.ci] if (rep, p) in CI else []),
                      id=f"{rep}-{p.split()[-1]}") for rep, prompts in SWEEP.items() for p in prompts]


@pytest.mark.parametrize("rep, prompt", CASES)
def test_prompt_is_recovered(tmp_path, sweep_results, rep, prompt):
    from tests.helpers import REPO

    run = fit(tmp_path, f"prompt={prompt}", "test.export=[glb]", config=str(REPO / "configs" / f"{rep}-sds.yaml"))
    m = json.loads((run / "metrics.json").read_text())
    exported = glb_fidelity(run)
    holes = porosity(run)
    sweep_results.append({"representation": rep, **m, "export": exported, "porosity": holes})
    assert passes(m, min_views=3, min_iou=0.75), m
    assert exported["silhouette_iou"] >= 0.9 and exported["psnr"] >= 20 and exported["interior_psnr"] >= 25, exported
    # Crisp at any resolution (issue 29): no holes inside the object at 256^2, nor lost coverage.
    assert holes["interior_256"] <= 0.01 and abs(holes["coverage_256"] / holes["coverage_fit"] - 1) <= 0.02, holes
    # No solid background-coloured geometry: the Gaussians torus had 13% before its recipe's sparsity term.
    assert holes["hidden_256"] <= 0.05, holes


def glb_fidelity(run) -> dict:
    """The run's exported .glb, as a viewer reloads it, re-rendered by the project's rasterizer
    from 8 orbit views against the representation's own renders (threedgen.export.mesh.fidelity)."""
    import torch
    import trimesh

    from threedgen.cameras import orbit
    from threedgen.export.mesh import fidelity
    from threedgen.runs import load_representation

    cfg, rep = load_representation(run)
    mesh = trimesh.load(run / "export" / "mesh.glb", force="mesh", process=False)
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    c = cfg.system.camera
    cams = orbit(8, c.eval_elevation, c.eval_distance, c.eval_fov_y, 128, start_azimuth=22.5)
    verts = from_file(mesh.vertices, "y")  # the glb is y-up (glTF's axis, issue 29); the renders z-up
    return fidelity(rep, verts, mesh.faces, mesh.visual.uv, texture, cams, torch.tensor(cfg.system.background))


def porosity(run, size: int = 256) -> dict:
    """Holes at ``size``^2 in a run fitted at a smaller size, from 8 orbit views against the true
    object's silhouette (the embedded world's): the fraction of its pixels with alpha < 0.5,
    over the whole silhouette ("raw_256": this counts the fit's shape error too, already
    1-3% at the fit's own size) and over its interior ("interior_256": the silhouette eroded by
    one pixel of the fit's size, the finest edge a fit can place), the coverage (pixels with
    alpha > 0.5) at ``size`` and at the fit's size, and "hidden_256": the fraction of the
    covered pixels whose colour is within 0.08 of the background's, solid geometry the renders
    hide on their background that a mesh, a splat viewer or another background shows."""
    import torch
    from scipy.ndimage import binary_erosion

    from threedgen import world
    from threedgen.cameras import orbit
    from threedgen.runs import load_representation
    from threedgen.world.metrics import parse_prompt

    cfg, rep = load_representation(run)
    c, (shape, colour) = cfg.system.camera, parse_prompt(cfg.prompt)
    bg = torch.tensor(cfg.system.background)
    views = lambda n: orbit(8, c.eval_elevation, c.eval_distance, c.eval_fov_y, n, start_azimuth=22.5)  # noqa: E731
    with torch.no_grad():
        out, fit_out = (rep.render(views(n), bg) for n in (size, c.resolution))
    alpha, fit_alpha = out.alpha[:, 0].cpu(), fit_out.alpha[:, 0].cpu()
    hidden = (out.rgb.cpu() - bg.view(1, 3, 1, 1)).abs().amax(1) < 0.08  # [8, H, W]
    truth = world.render([shape] * 8, [colour] * 8, views(size)).alpha[:, 0] > 0.5  # [8, H, W]
    interior = torch.from_numpy(binary_erosion(truth.numpy(), np.ones((1, 3, 3)), iterations=size // c.resolution))
    holes = lambda mask: round(float((alpha < 0.5)[mask].float().mean()), 4)  # noqa: E731
    return {"raw_256": holes(truth), "interior_256": holes(interior),
            "coverage_256": round(float((alpha > 0.5).float().mean()), 4),
            "coverage_fit": round(float((fit_alpha > 0.5).float().mean()), 4),
            "hidden_256": round(float(hidden[alpha > 0.5].float().mean()), 4)}


@pytest.mark.slow
@pytest.mark.parametrize("use_camera", [True, False], ids=["camera", "no-camera"])
def test_janus_count(tmp_path, sweep_results, use_camera):
    """How often a mug comes out with exactly one handle, with and without camera conditioning."""
    from tests.helpers import REPO

    handles = []
    for seed in range(3):
        run = fit(tmp_path, "prompt=a red mug", f"trainer.seed={seed}",
                  f"system.guidance.use_camera={str(use_camera).lower()}",
                  config=str(REPO / "configs" / "gaussians-sds.yaml"))
        m = json.loads((run / "metrics.json").read_text())
        handles.append(m["handles"])
        sweep_results.append({"representation": f"gaussians janus use_camera={use_camera}", **m})
    assert all(isinstance(h, int) for h in handles)
    if use_camera:
        assert handles.count(1) >= 2, handles


@pytest.mark.slow
def test_two_stage_nerf_to_mesh(tmp_path, sweep_results):
    """Magic3D's workflow: a coarse NeRF, then a mesh refined from its isosurface."""
    from tests.helpers import REPO

    coarse = fit(tmp_path, "prompt=a red cube", config=str(REPO / "configs" / "nerf-sds.yaml"))
    run = fit(tmp_path, "prompt=a red cube", f"init_from={coarse}",
              config=str(REPO / "configs" / "mesh-refine.yaml"))
    m = json.loads((run / "metrics.json").read_text())
    sweep_results.append({"representation": "nerf -> mesh", **m})
    assert passes(m, min_views=3, min_iou=0.8), m
