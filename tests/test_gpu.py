"""The GPU acceptance suite: every recipe on CUDA, real priors at their real scale (marked `gpu`,
skipped without CUDA). On a GPU machine, from the project root:

    bash .gpu/run.sh python3 -m pytest -q -n 0 -m gpu tests/     # see ../shared/gpu-kit/README.md

- Every recipe in configs/ runs 3 steps through the CLI. The embedded ones at their own sizes;
  the real-prior ones (dreamfusion-sd, prolificdreamer, luciddreamer, dreamer-xl, mvdream-sds) on
  random-weight checkpoints of the published shapes (benchmarks/real_priors.py: UNet, VAE, text
  encoders and scheduler built from the published configs at test time, no download), at the
  recipe's own render and prior resolution and dtype; the 4D recipe also on a ModelScope-shaped
  video prior.
- "a red cube" (Gaussians + SDS) and "a green cone" (NeRF + SDS) run to completion and meet the
  CPU quality bars, the Gaussians through gsplat's CUDA rasterizer (asserted).
- A GPU run resumes, exports (glb, splat, views) and evaluates; the 4D bouncing ball moves.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY, run_dirs
from threedgen import config as C
from threedgen.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

RECIPES = sorted((REPO / "configs").glob("*.yaml"))
FAMILY = {"stabilityai/stable-diffusion-2-1-base": "sd21", "stabilityai/stable-diffusion-xl-base-1.0": "sdxl"}


def mvdream_file(folder: Path) -> Path:
    """An MVDream-layout single file with random weights over SD 2.1's published UNet shape, as
    MVDream's sd-v2.1-base-4view.pt is laid out."""
    from diffusers import UNet2DConditionModel

    from threedgen.benchmarks.real_priors import FAMILIES
    from tests.tiny_priors import save_mvdream_file

    with torch.device("cuda"):
        unet = UNet2DConditionModel(**FAMILIES["mvdream"][0]).half()
    return save_mvdream_file(unet, folder / "sd-v2.1-base-4view.pt")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """family -> a random-weight checkpoint of the published shape, built once per session."""
    from threedgen.benchmarks.real_priors import save_random_checkpoint

    root, made = tmp_path_factory.mktemp("real-priors"), {}

    def get(family: str) -> Path:
        if family not in made:
            if family == "mvdream":
                made[family] = mvdream_file(root / "mvdream")
            else:
                made[family] = save_random_checkpoint(family, root / family, device="cuda")
        return made[family]

    return get


def real_prior_overrides(recipe: Path, checkpoint) -> list[str]:
    """Point a real-prior recipe at its random-weight checkpoint; sizes and dtype stay the recipe's."""
    prior = C.load([recipe], ["prompt=a red cube"]).system.prior
    if prior.name == "mvdream":
        return [f"system.prior.path={checkpoint('mvdream')}", f"system.prior.base={checkpoint('sd21')}"]
    if prior.name == "diffusers":
        return [f"system.prior.path={checkpoint(FAMILY[prior.path])}"]
    return []


def fit(tmp_path, *overrides, config) -> tuple[Path, dict]:
    before = set(run_dirs(tmp_path))
    assert main(["fit", "--config", str(config), f"output_dir={tmp_path}", *overrides]) == 0
    (run,) = set(run_dirs(tmp_path)) - before
    return run, json.loads((run / "metrics.json").read_text())


def logged_losses(run: Path) -> list[float]:
    import csv

    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    return [float(r["loss"]) for r in rows if r.get("loss")]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_on_cuda(tmp_path, checkpoint, recipe):
    torch.cuda.reset_peak_memory_stats()
    run, m = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=3", "trainer.ckpt_every=3", *TINY,
                 *real_prior_overrides(recipe, checkpoint), config=recipe)
    assert m["steps"] == 3 and m["device"].startswith("cuda"), m
    assert all(math.isfinite(v) for v in logged_losses(run))
    print(f"{recipe.stem}: {m.get('seconds_per_step')} s/step, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


@pytest.mark.parametrize("options", [["system.prior.dtype=bfloat16"], ["system.prior.vae_tiling=true"],
                                     ["system.prior.vae_slicing=true"],
                                     ["system.prior.attention_slicing=true"], ["system.prior.cpu_offload=true"]],
                         ids=lambda o: o[0].split(".")[-1])
def test_real_scale_options(tmp_path, checkpoint, options):
    """dreamfusion-sd (SD 2.1 shape, 512^2 prior input) with each memory/precision option."""
    recipe = REPO / "configs" / "dreamfusion-sd.yaml"
    run, m = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", *TINY, *real_prior_overrides(recipe, checkpoint),
                 *options, config=recipe)
    assert m["steps"] == 2 and all(math.isfinite(v) for v in logged_losses(run))


def test_sdpa_attention(checkpoint):
    """The real-shape UNet attends through torch's scaled_dot_product_attention (diffusers'
    AttnProcessor2_0), the memory-efficient kernel on CUDA."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from threedgen.registry import prior_from_pretrained

    prior = prior_from_pretrained(checkpoint("sd21"), dtype="float16")
    assert {type(p) for p in prior.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_vsd_at_512_fits_in_20_gib(tmp_path, checkpoint):
    """prolificdreamer at 512^2 renders (threestudio's README: about 30 GB)."""
    recipe = REPO / "configs" / "prolificdreamer.yaml"
    torch.cuda.reset_peak_memory_stats()
    fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", *TINY, "system.camera.resolution=512",
        *real_prior_overrides(recipe, checkpoint), config=recipe)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    print(f"prolificdreamer at 512^2: peak {peak:.1f} GiB")
    assert peak <= 20, peak


def test_video_prior_at_real_scale(tmp_path, checkpoint):
    """The 4D recipe with a ModelScope-shaped video prior (float16) instead of the embedded one."""
    run, m = fit(tmp_path, "prompt=a red ball bouncing", "trainer.max_steps=3", "system.video.start=0", *TINY,
                 "system.video.image_probability=0", "system.video.prior.name=diffusers",
                 f"system.video.prior.path={checkpoint('modelscope')}", "system.video.prior.dtype=float16",
                 config=REPO / "configs" / "4d-gaussians-sds.yaml")
    assert m["steps"] == 3 and m["device"].startswith("cuda") and all(math.isfinite(v) for v in logged_losses(run))


@pytest.mark.parametrize("recipe, prompt, shape, colour", [("gaussians-sds", "a red cube", "cube", "red"),
                                                           ("nerf-sds", "a green cone", "cone", "green")])
def test_quality_on_cuda(tmp_path, monkeypatch, recipe, prompt, shape, colour):
    """The CPU bars on the GPU; the Gaussians through gsplat's CUDA rasterizer, the NeRF through
    nerfacc's compositing (its batched functions, on CUDA tensors)."""
    import gsplat
    import nerfacc

    calls = {"gsplat": [], "nerfacc": []}
    for module, name, key in ((gsplat, "rasterization", "gsplat"), (nerfacc, "render_weight_from_density", "nerfacc")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _k=key, **k: calls[_k].append(a[0].device.type) or _f(*a, **k))
    _, m = fit(tmp_path, f"prompt={prompt}", "trainer.val_every=0", "test.export=[]",
               config=REPO / "configs" / f"{recipe}.yaml")
    assert m["device"].startswith("cuda")
    assert m["shape_correct_views"] == 4 and m["colour_correct_views"] == 4 and m["iou"] >= 0.85, m
    used = calls["gsplat" if recipe == "gaussians-sds" else "nerfacc"]
    assert used and set(used) == {"cuda"}, calls


def test_resume_export_eval_of_a_gpu_run(tmp_path, capsys):
    run, m = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=4", "trainer.ckpt_every=2", *TINY,
                 config=REPO / "configs" / "gaussians-sds.yaml")
    assert main(["fit", "--resume", str(run)]) == 0  # a finished run: loads its checkpoint onto the GPU
    assert main(["export", str(run), "--format", "glb", "splat", "views", "azimuths=4"]) == 0
    for f in ("mesh.glb", "splat.ply", "views/transforms.json"):
        assert (run / "export" / f).is_file(), f
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["shape_votes"]


def test_4d_bouncing_ball_on_cuda(tmp_path):
    _, m = fit(tmp_path, "prompt=a red ball bouncing", "trainer.val_every=0", "test.export=[]", "test.n_frames=8",
               config=REPO / "configs" / "4d-gaussians-sds.yaml")
    assert m["device"].startswith("cuda")
    assert m["min_shape_correct_views"] >= 3 and m["min_colour_correct_views"] >= 3 and m["min_iou"] >= 0.7, m
    assert m["motion_correlation"] >= 0.8 and m["motion_amplitude"] >= 0.3, m
