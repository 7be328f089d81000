"""CLIP metrics and benchmark render sets (issue 30): the CLIP loader (local folders, hub ids
offline, one-line errors), CLIP score and R-precision against a prompt pool, the embedded world's
CLIP, eval of a Stable Diffusion run and of a suite of runs, GPTEval3D's view sets and T3Bench's
obj layout. CLIP models here are tiny random ones built from a config (tests/tiny_priors.py),
or the shipped world CLIP."""

import csv
import glob
import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from tests.helpers import REPO, TINY
from tests.test_fit import fit
from tests.tiny_priors import tiny_clip, tiny_sd
from threedgen.cameras import make_cameras
from threedgen.cli import main
from threedgen.config import load
from threedgen.evaluate import clip_model_name, evaluate_run, metrics_table
from threedgen.export.formats import ExportConfig
from threedgen.export.views import to_uint8
from threedgen.priors.base import PriorLoadError
from threedgen.priors.clip import (EMBEDDED_CLIP_PATH, PROMPT_POOL, load_clip, read_prompt_pool, retrieval,
                                   retrieval_texts)
from threedgen.runs import load_representation
from threedgen.schedules import ConfigError
from threedgen.world.clip import train_world_clip, world_clip_figures, world_prompts

GAUSSIANS = str(REPO / "configs" / "gaussians-sds.yaml")
POOL = ["a blue sphere", "a green cone", "an orange torus", "a red cylinder"]


def planted_clip(folder, prompt: str):
    """A tiny CLIP that embeds every image exactly as ``prompt``'s text: its vision tower's last
    norm outputs a constant b (weight 0, bias b) and its projection maps b onto the prompt's text
    embedding t (W = t b^T / |b|^2). ``prompt`` is then the only text that matches any render."""
    tiny_clip(folder)
    model = CLIPModel.from_pretrained(folder)
    tokens = AutoTokenizer.from_pretrained(folder)([prompt], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        t = model.text_projection(pooled)[0]  # [D]
        norm = model.vision_model.post_layernorm
        b = torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(0))
        norm.weight.zero_()
        norm.bias.copy_(b)
        model.visual_projection.weight.copy_(torch.outer(t, b) / b.dot(b))
    model.save_pretrained(folder)
    return folder


def spy(calls: list):
    """A stand-in for the world classifier's loader that records the call and fails the test."""
    def load_world_classifier():
        calls.append("loaded")
        pytest.fail("the world classifier was loaded")

    return load_world_classifier


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    """A two-step run on the embedded prior (its end-of-run metrics include the world CLIP's)."""
    return fit(tmp_path_factory.mktemp("world"), "prompt=a red cube", "trainer.max_steps=2", *TINY, config=GAUSSIANS)


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    """(run, calls): a two-step run on a tiny random Stable Diffusion, with a spy on the world
    classifier's loader recording every call during the fit."""
    root = tmp_path_factory.mktemp("sd")
    sd = tiny_sd(root / "sd")
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("threedgen.evaluate.load_world_classifier", spy(calls))
        run = fit(root, "prompt=a red cube", "trainer.max_steps=2", "system.prior.name=diffusers",
                  f"system.prior.path={sd}", *TINY, config=GAUSSIANS)
    return run, calls


@pytest.fixture
def classifier_spy(monkeypatch):
    calls = []
    monkeypatch.setattr("threedgen.evaluate.load_world_classifier", spy(calls))
    return calls


# --- the loader and the metrics ------------------------------------------------------------------
def test_tiny_clip_loads_and_embeds_with_the_documented_shapes(clip_dir):
    clip = load_clip(str(clip_dir))
    assert isinstance(clip.model, CLIPModel) and clip.image_size == 32
    img, txt = clip.embed(torch.rand(5, 3, 32, 32), ["a red cube", "a blue sphere", "a green cone"])
    assert img.shape == (5, 8) and txt.shape == (3, 8)  # [V, D], [P, D]
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    # larger views are resized by the model's image processor; the prompt's own caption is no distractor
    m = clip.metrics(torch.rand(4, 3, 48, 48), "a red cube", ["a blue sphere", "the red cube", "A red cube."])
    assert m["clip_pool"] == 2
    assert -1 <= m["clip_score"] <= 1 and m["clip_r_precision"] in (0, 0.25, 0.5, 0.75, 1) and 1 <= m["clip_rank"] <= 2
    assert clip.unreadable("a red cube") is None
    assert "'corgi'" in clip.unreadable("a red corgi")  # a closed vocabulary: the word it cannot read


def test_r_precision_ranks_the_prompt_among_the_pool():
    texts = torch.eye(4)  # four orthogonal captions, the prompt first
    views = torch.stack([texts[0], texts[0], texts[2], F.normalize(texts[0] + 0.5 * texts[1], dim=0)])
    r, rank = retrieval(views, texts)
    assert r == 0.75 and rank == pytest.approx((1 + 1 + 4 + 1) / 4)  # view 2 ties with 3 captions: rank 4
    r, rank = retrieval(views, texts, torch.tensor([0, 1, 2, 1]))  # one true caption per view
    assert r == 0.5 and rank == pytest.approx((1 + 4 + 1 + 2) / 4)
    assert retrieval_texts("a red cube", ["The red cube!", "a blue cube", "a blue cube", "red cube"]) == \
        ["a red cube", "a blue cube"]
    with pytest.raises(ConfigError, match="nothing to rank it against"):
        retrieval_texts("a red cube", ["the red cube"])


def test_planted_clip_ranks_the_only_matching_prompt_first(tmp_path):
    clip = load_clip(str(planted_clip(tmp_path / "planted", "a red cube")))
    views = torch.rand(4, 3, 32, 32)  # whatever the views show, they embed as "a red cube"
    m = clip.metrics(views, "a red cube", POOL)
    assert m["clip_r_precision"] == 1.0 and m["clip_rank"] == 1.0 and m["clip_pool"] == 5
    assert m["clip_score"] == pytest.approx(1.0, abs=1e-4)
    miss = clip.metrics(views, "a blue sphere", ["a red cube", *POOL])  # the views match a distractor instead
    assert miss["clip_r_precision"] == 0.0 and miss["clip_rank"] >= 2 and miss["clip_score"] < 0.999


def test_prompt_pools(tmp_path):
    pool = read_prompt_pool(PROMPT_POOL)
    assert len(pool) >= 150 and len({p.lower() for p in pool}) == len(pool)
    with pytest.raises(ConfigError, match=r"eval.prompt_pool: cannot read .*missing.txt"):
        read_prompt_pool(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        read_prompt_pool(tmp_path / "empty.txt")
    assert len(world_prompts()) == 36 and "an orange cube" in world_prompts()


def test_missing_and_offline_models_fail_at_once_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PriorLoadError) as e:
        load_clip("acme/no-such-clip")
    msg = str(e.value)
    assert "\n" not in msg and "'acme/no-such-clip'" in msg and "hf download acme/no-such-clip" in msg
    assert "eval.clip_model" in msg and "HF_HUB_OFFLINE=1" in msg
    with pytest.raises(PriorLoadError, match="no such folder"):
        load_clip(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(PriorLoadError, match="missing model.safetensors"):
        load_clip(str(tmp_path / "half"))


def test_eval_section_defaults_to_the_world_clip_on_the_embedded_prior_only():
    cfg = load([GAUSSIANS], ["prompt=a red cube"])
    assert (cfg.eval.clip_model, cfg.eval.views, cfg.eval.prompt_pool) == ("auto", 8, None)
    assert clip_model_name(cfg) == "embedded"
    sd = load([GAUSSIANS], ["prompt=a red cube", "system.prior.name=diffusers", "system.prior.path=org/model"])
    assert clip_model_name(sd) is None
    assert clip_model_name(load([GAUSSIANS], ["prompt=a red cube", "eval.clip_model=null"])) is None
    assert clip_model_name(load([GAUSSIANS], ["prompt=a", "eval.clip_model=org/clip"])) == "org/clip"
    with pytest.raises(ConfigError, match="eval.views: must be at least 1"):
        load([GAUSSIANS], ["prompt=a red cube", "eval.views=0"])
    assert clip_model_name(load([GAUSSIANS], ["prompt=a red cube", "eval.clip_model="])) is None


# --- the embedded world's CLIP -------------------------------------------------------------------
def test_world_clip_reads_fresh_renders_and_not_mismatched_ones():
    """Fresh world renders (a seed the training never saw, any camera): the true prompt ranks
    first among the 36 in >= 90% of them; a mismatched prompt (another shape or colour) does no
    better than chance, 1/36."""
    for f in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (EMBEDDED_CLIP_PATH / f).is_file(), f
    assert (EMBEDDED_CLIP_PATH / "model.safetensors").stat().st_size < 2 ** 20
    figures = world_clip_figures(load_clip("embedded"), n=144, seed=4321)
    assert figures["r_precision"] >= 0.9, figures
    assert figures["mismatched_r_precision"] <= 2 * figures["chance"], figures
    assert figures["clip_score"] > figures["mismatched_clip_score"] + 0.3, figures


def test_world_clip_training_writes_a_folder_clip_model_loads(tmp_path):
    clip = train_world_clip(tmp_path / "clip", steps=2, n_renders=8)
    assert isinstance(CLIPModel.from_pretrained(tmp_path / "clip"), CLIPModel)  # the transformers path, as a real CLIP
    img, txt = clip.embed(torch.rand(2, 3, 32, 32), world_prompts())
    assert img.shape == (2, 32) and txt.shape == (36, 32)
    assert main(["train-prior", "--part", "clip", "--video", "--out", str(tmp_path / "v")]) == 2


# --- runs ----------------------------------------------------------------------------------------
def test_embedded_run_reports_world_and_clip_metrics(world_run):
    m = json.loads((world_run / "metrics.json").read_text())
    assert m["shape"] == "cube" and "iou" in m  # the world's metrics
    assert (m["clip_model"], m["clip_views"], m["clip_pool"]) == ("embedded", 8, 36)
    assert 0 <= m["clip_r_precision"] <= 1 and -1 <= m["clip_score"] <= 1 and "unavailable" not in m


def test_sd_prior_run_never_touches_the_world_classifier(sd_run, classifier_spy, tmp_path, capsys):
    run, fit_calls = sd_run
    assert fit_calls == []
    m = json.loads((run / "metrics.json").read_text())
    assert "shape_votes" not in m and "iou" not in m and "clip_score" not in m and 0 <= m["coverage"] <= 1
    assert "prior (diffusers) is not the embedded world's" in m["unavailable"]["world"]
    assert "no CLIP model is configured" in m["unavailable"]["clip"] and "eval.clip_model" in m["unavailable"]["clip"]
    # with a CLIP given, eval reports its metrics from the run's renders
    planted = planted_clip(tmp_path / "planted", "a red cube")
    assert main(["eval", str(run), "--clip-model", str(planted)]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["clip_r_precision"] == 1.0 and e["clip_rank"] == 1.0 and e["clip_score"] == pytest.approx(1, abs=1e-4)
    assert e["clip_views"] == 8 and e["clip_pool"] == len(retrieval_texts("a red cube", read_prompt_pool(PROMPT_POOL)))
    assert set(e["unavailable"]) == {"world"} and classifier_spy == []
    # the user's own pool, and a random CLIP's metrics in range
    (tmp_path / "pool.txt").write_text("\n".join(POOL) + "\n")
    assert main(["eval", str(run), f"eval.clip_model={tiny_clip(tmp_path / 'tiny')}",
                 f"eval.prompt_pool={tmp_path / 'pool.txt'}", "eval.views=4"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["clip_pool"] == 5 and e["clip_views"] == 4 and 0 <= e["clip_r_precision"] <= 1


def test_eval_of_an_unloadable_clip(sd_run, tmp_path, monkeypatch, capsys):
    """Asked for on the command line: one line, exit 2. Configured for a fit: the run ends and
    reports the reason."""
    run, _ = sd_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["eval", str(run), "--clip-model", "acme/no-such-clip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf download acme/no-such-clip" in err
    assert main(["eval", str(run), "trainer.seed=3"]) == 2
    assert "only eval.* settings" in capsys.readouterr().err
    cfg, rep = load_representation(run)
    m = evaluate_run(replace(cfg, eval=replace(cfg.eval, clip_model="acme/no-such-clip")), rep, torch.ones(3))
    assert "hf download acme/no-such-clip" in m["unavailable"]["clip"] and "clip_score" not in m


def test_eval_of_a_suite_prints_one_table_and_writes_json(world_run, sd_run, tmp_path, capsys):
    run, _ = sd_run
    out = tmp_path / "eval.json"
    assert main(["eval", str(world_run), str(run), "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:2] == ["run", "prompt"]
    for col in ("iou", "coverage", "clip_score", "clip_r_precision", "clip_rank", "unavailable"):
        assert col in header, header
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:4]]
    assert all(len(r) == len(header) for r in rows)
    sd_row = dict(zip(header, rows[1]))
    assert sd_row["clip_r_precision"] == "-" and sd_row["unavailable"] == "world, clip"
    assert any(line.startswith("- clip unavailable: no CLIP model is configured") for line in table)
    saved = json.loads(out.read_text())
    assert [r["run"] for r in saved] == [str(world_run), str(run)] and "clip_r_precision" in saved[0]
    lines = list(csv.reader(io.StringIO(metrics_table(saved, "csv"))))
    assert lines[0] == header and len(lines) == 3 and "clip: no CLIP model" in lines[2][-1]
    assert main(["eval", str(run), str(run), "--format", "csv"]) == 0  # the command's csv
    lines = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert lines[0][:2] == ["run", "prompt"] and len(lines) == 3 and lines[1] == lines[2]
    assert main(["eval", str(world_run), "--out", str(tmp_path / "missing" / "e.json")]) == 2


# --- benchmark render sets -----------------------------------------------------------------------
def test_gpteval3d_views_on_threestudios_test_path(world_run, tmp_path):
    """GPTEval3D reads <method>/<prompt id>/<seed>/rgb_%d.png and normal_%d.png (120 of each),
    int()s every entry of the method folder, picks views range(0, 120, 120 // n) and stacks
    them with numpy."""
    assert ExportConfig().size(512) == 512
    assert main(["export", str(world_run), "--format", "gpteval3d", "resolution=16", "prompt_id=7",
                 "--out", str(tmp_path)]) == 0
    method = tmp_path / "gpteval3d"
    assert [p.name for p in method.iterdir()] == ["7"] and [p.name for p in (method / "7").iterdir()] == ["0"]
    folder = method / "7" / "0"
    assert {p.name for p in folder.iterdir()} == {f"{kind}_{k}.png" for kind in ("rgb", "normal")
                                                  for k in range(120)}
    views = [np.asarray(Image.open(folder / f"{kind}_{k}.png"))
             for kind in ("rgb", "normal") for k in range(0, 120, 30)]
    assert np.concatenate(views, axis=1).shape == (16, 16 * 8, 3)
    # view k: threestudio's test camera k (elevation 15, azimuth linspace(0, 360, 120)[k]) at the run's distance
    cfg, rep = load_representation(world_run)
    c = cfg.system.camera
    for k in (0, 30, 119):
        cam = make_cameras(15.0, torch.linspace(0, 360, 120)[k], c.eval_distance, c.eval_fov_y, 16)
        with torch.no_grad():
            expect = to_uint8(rep.render(cam, torch.tensor(cfg.system.background)).rgb[0].permute(1, 2, 0))
        got = np.asarray(Image.open(folder / f"rgb_{k}.png"))
        assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1, k
    normal = np.asarray(Image.open(folder / "normal_0.png")).astype(int)
    assert normal[0, 0].max() <= 1 and normal[8, 8].max() > 64  # black where empty, (n + 1) / 2 on the object


def test_obj_export_loads_in_t3bench_layout(world_run, tmp_path):
    """T3Bench (run_eval_quality.py) globs outputs_mesh_t3/<method>_<group>/<prompt, spaces as _>*/
    save/it*-export/model.obj (threestudio's export folder: model.obj, its .mtl, the texture)
    and render/meshrender.py loads it with trimesh.load and recentres mesh.vertices in place."""
    assert main(["export", str(world_run), "--format", "obj", "grid=32", "texture_size=32", "max_faces=2000",
                 "--out", str(tmp_path / "export")]) == 0
    prompt = "a red cube"
    export = tmp_path / "outputs_mesh_t3" / "threedgen_single" / f"{prompt.replace(' ', '_')}@1" / "save" / "it2-export"
    export.mkdir(parents=True)
    for f in (tmp_path / "export" / "obj").iterdir():
        shutil.copy(f, export / ("model.obj" if f.suffix == ".obj" else f.name))
    pattern = f"{tmp_path}/outputs_mesh_t3/threedgen_single/{prompt.replace(' ', '_')}*/save/it*-export/model.obj"
    (obj_path,) = glob.glob(pattern)
    mesh = trimesh.load(obj_path)
    assert isinstance(mesh, trimesh.Trimesh)  # not a Scene: T3Bench edits mesh.vertices directly
    texture = mesh.visual.material.image
    (png,) = export.glob("*.png")
    assert mesh.visual.kind == "texture" and texture is not None and texture.size == Image.open(png).size
    assert len(mesh.visual.uv) == len(mesh.vertices) and len(mesh.faces) > 0
    v = mesh.vertices - mesh.vertices.mean(axis=0)
    v /= np.abs(v).max()  # T3Bench's normalisation to [-1, 1]^3
    assert np.isfinite(v).all() and np.abs(v).max() == pytest.approx(1)
