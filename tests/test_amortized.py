"""The amortized generator (issue 31): one prompt-conditioned triplane generator for a corpus.

Default suite: the generator's shapes and seeding, corpus shards and per-rank draws, bad input
as one line, a 2-step fit whose `generate` folders `eval`, `export` and `fit init_from=` read
unchanged, and a 2-process gloo DDP run killed (-9, one rank) and resumed.
Quality (slow; `ci` runs the two-prompt case, 57 s alone on an idle 2-core machine, 2026-12-05):
python -m pytest -m slow -s tests/test_amortized.py
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY, run_dirs
from tests.test_fit import assert_intact, fit
from threedgen import config as C
from threedgen.amortized import Corpus, read_corpus, shard, step_generator
from threedgen.cli import main
from threedgen.priors.diffusion import EMBEDDED_PATH
from threedgen.registry import prior_from_pretrained
from threedgen.representations.generator import TriplaneGenerator
from threedgen.schedules import ConfigError

ASD = str(REPO / "configs" / "amortized-asd.yaml")
# A small generator and renders, for the tests' speed (the optimisation is real).
SMALL = ["system.representation.resolution=16", "system.representation.n_samples=16",
         "system.amortized.generator.tokens=4", "system.amortized.generator.width=16",
         "system.amortized.generator.heads=2", "system.amortized.generator.layers=1",
         "system.amortized.generator.conv_channels=8", "system.camera.resolution=16",
         "system.camera.batch_size=1", "system.amortized.prompts_per_step=2"]


def corpus_file(tmp_path, prompts, name="corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{p}\n" for p in prompts))
    return path


@pytest.fixture(scope="module")
def prior():
    return prior_from_pretrained(EMBEDDED_PATH)


# --- the generator -------------------------------------------------------------------------------

def test_generator_shapes_seed_and_text_dependence():
    cfg = TriplaneGenerator.Config(tokens=4, width=16, heads=2, layers=1, conv_channels=8)
    a, b = (TriplaneGenerator(cfg, text_dim=64, channels=6, resolution=16, seed=0) for _ in range(2))
    c = TriplaneGenerator(cfg, text_dim=64, channels=6, resolution=16, seed=1)
    text = torch.randn(3, 8, 64)  # P prompts, L tokens, D
    planes = a(text)
    assert planes.shape == (3, 3, 6, 16, 16)
    assert torch.equal(planes, b(text)) and not torch.equal(planes, c(text))
    assert not torch.allclose(planes[0], planes[1])  # each prompt its own planes
    planes.square().sum().backward()
    assert all(p.grad is not None for p in a.parameters())


def test_resolution_must_be_tokens_times_a_power_of_two():
    with pytest.raises(ConfigError, match="tokens .8. times a power of two"):
        C.load([ASD], ["system.representation.resolution=48"])


def test_per_prompt_runs_refuse_several_devices():
    with pytest.raises(ConfigError, match="trainer: several processes"):
        C.load([REPO / "configs" / "triplane-sds.yaml"], ["prompt=a red cube", "trainer.devices=2",
                                                          "trainer.strategy=ddp"])
    with pytest.raises(ConfigError, match="strategy: several devices"):
        C.load([ASD], ["trainer.devices=2"])


# --- corpus, shards, draws -----------------------------------------------------------------------

def test_corpus_file_shards_and_rank_draws(tmp_path, prior):
    path = corpus_file(tmp_path, ["a red cube", "  ", "a blue cone ", "a red cube", "a green torus", "a red mug"])
    prompts = read_corpus(path)
    assert prompts == ["a red cube", "a blue cone", "a green torus", "a red mug"]  # blanks and repeats dropped
    shards = [shard(prompts, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(prompts) and shards[0] == ["a red cube", "a red mug"]
    with pytest.raises(ConfigError, match="2 prompt.s. for 3 processes"):
        shard(prompts[:2], 0, 3)
    # per-rank streams: reproducible, different between ranks
    draw = lambda rank, step: torch.rand(4, generator=step_generator(7, rank, step))  # noqa: E731
    assert torch.equal(draw(1, 5), draw(1, 5)) and not torch.equal(draw(0, 5), draw(1, 5))
    corpus = Corpus(prior, shards[0])
    assert sorted(corpus.draw(2, step_generator(0, 0, 0))) == sorted(shards[0])
    with pytest.raises(ConfigError, match="prompts_per_step: 3"):
        corpus.draw(3, step_generator(0, 0, 0))


def test_conditions_follow_each_views_prompt(prior):
    from threedgen.cameras import orbit
    from threedgen.prompts import PromptProcessor

    corpus = Corpus(prior, ["a red cube", "a blue cone"])
    cams = orbit(4, 20.0, 2.8, 30.0, 32)
    text, cond = corpus.conditions(["a blue cone", "a red cube"], cams, step=0)
    cone = PromptProcessor(prior, "a blue cone").conditioning(cams[:2])
    cube = PromptProcessor(prior, "a red cube").conditioning(cams[2:])
    assert text.shape == (2, 8, 64)
    for name in ("text", "null_text", "camera", "null_camera", "pose"):
        assert torch.equal(getattr(cond, name), torch.cat([getattr(cone, name), getattr(cube, name)])), name
    assert cond.negative is None and cond.perp_neg == ()


# --- bad input: one line, exit 2, no run folder ----------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("empty", "holds no prompt"),
    ("unknown-word", "unknown word 'dog'"),
    ("missing", "cannot read it"),
    ("too-few", "prompts_per_step: 2, but this process's shard holds 1"),
])
def test_bad_corpus_is_one_line(tmp_path, capsys, case, expected):
    path = {"empty": lambda: corpus_file(tmp_path, ["", "  "]),
            "unknown-word": lambda: corpus_file(tmp_path, ["a red cube", "a blue dog"]),
            "missing": lambda: tmp_path / "nowhere.txt",
            "too-few": lambda: corpus_file(tmp_path, ["a red cube"])}[case]()
    code = main(["fit", "--config", ASD, f"output_dir={tmp_path / 'out'}", *TINY, *SMALL,
                 f"system.amortized.corpus={path}", "trainer.max_steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert str(path) in err if case != "too-few" else True
    assert run_dirs(tmp_path / "out") == []


def test_generate_refuses_bad_input_in_one_line(tmp_path, capsys, generator_run):
    assert main(["generate", str(generator_run), "a blue dog"]) == 2
    assert "unknown word 'dog'" in capsys.readouterr().err
    assert main(["generate", str(generator_run)]) == 2
    assert "generate needs prompts" in capsys.readouterr().err
    plain = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=1")
    assert main(["generate", str(plain), "a red cube"]) == 2
    assert "not a generator run" in capsys.readouterr().err
    assert not (generator_run / "generated").exists()


# --- fit, generate, then eval / export / init_from on the generated folders ---------------------------

@pytest.fixture(scope="module")
def generator_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generator")
    corpus = corpus_file(tmp, ["a red cube", "a green cone", "a blue torus"])
    return fit(tmp, *SMALL, f"system.amortized.corpus={corpus}", "trainer.max_steps=2", "trainer.ckpt_every=1",
               "trainer.val_every=1", config=ASD)


def test_generator_run_folder(generator_run):
    m = json.loads((generator_run / "metrics.json").read_text())
    assert m["steps"] == 2 and m["corpus_prompts"] == 3 and m["processes"] == 1 and m["shape"] == "cube"
    assert (generator_run / "corpus.txt").read_text().splitlines() == ["a red cube", "a green cone", "a blue torus"]
    assert (generator_run / "val" / "step00002.png").is_file()
    rows = (generator_run / "logs" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    state = torch.load(generator_run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert "representation.triplane.planes" not in state  # unused: never saved
    assert any(k.startswith("representation.generator.") for k in state)


def test_generate_writes_ordinary_runs_that_eval_export_and_init_from_read(tmp_path, generator_run, capsys):
    prompts = corpus_file(tmp_path, ["a red torus"], "more.txt")
    out = tmp_path / "gen"
    assert main(["generate", str(generator_run), "a blue cone", "--prompts", str(prompts), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    runs = [Path(r["run"]) for r in printed]
    assert [r["prompt"] for r in printed] == ["a blue cone", "a red torus"]
    assert sorted(runs) == run_dirs(out.parent) and all(r.parent == out for r in runs)
    for run in runs:
        for f in ["config.yaml", "cmd.txt", "ckpts/last.ckpt", "metrics.json", "test/000.png", "test/turntable.mp4"]:
            assert (run / f).is_file(), f
        assert_intact(run)
        assert printed[runs.index(run)]["generate_seconds"] < 5  # measured figures: README
    cone = runs[0]
    cfg = C.load([cone / "config.yaml"])
    assert cfg.system.amortized is None and cfg.system.representation.name == "triplane"
    assert main(["eval", str(cone)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["shape"] == "cone" and ev["colour"] == "blue"
    assert main(["export", str(cone), "--format", "glb", "mp4", "texture_size=64", "frames=4", "resolution=32"]) == 0
    assert (cone / "export" / "mesh.glb").is_file() and (cone / "export" / "turntable.mp4").is_file()
    # a fine-tuning stage starts from the generated planes and decoder
    tuned = fit(tmp_path / "tuned", "trainer.max_steps=1", f"init_from={cone}", config=str(cone / "config.yaml"))
    start = torch.load(cone / "ckpts" / "last.ckpt", weights_only=True)["state_dict"]
    end = torch.load(tuned / "ckpts" / "last.ckpt", weights_only=True)["state_dict"]
    assert (end["representation.planes"] - start["representation.planes"]).abs().max() < 0.2  # one step from there


# --- DDP: 2 processes on gloo, kill -9 one rank, resume ---------------------------------------------

def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_ddp_two_processes_kill_one_rank_then_resume(tmp_path):
    """Lightning's launcher starts rank 1 as a child of rank 0; both read their own shard, rank 0
    writes the checkpoints. SIGKILL rank 1 after the first checkpoint (the job then dies: rank 0
    fails or is killed, as a scheduler would), resume with both ranks, and every step appears
    once in the log, the last checkpoint holds every step, and no temporary file is left."""
    corpus = corpus_file(tmp_path, ["a red cube", "a green cone", "a blue torus", "a yellow sphere"])
    steps = 12
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    args = [sys.executable, "-m", "threedgen.cli", "fit", "--config", ASD, f"output_dir={tmp_path / 'out'}", *TINY,
            *SMALL, "system.amortized.prompts_per_step=1", f"system.amortized.corpus={corpus}", "trainer.devices=2",
            "trainer.strategy=ddp", f"trainer.max_steps={steps}", "trainer.ckpt_every=3", "trainer.threads=1"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not list((tmp_path / "out").glob("*/*/ckpts/last.ckpt")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        (rank1,) = children(proc.pid)
        os.kill(rank1, signal.SIGKILL)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # rank 0 waits on its peer: the scheduler ends the job
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (run,) = run_dirs(tmp_path / "out")
    saved = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 0 < int(saved["state_dict"]["step_count"]) < steps  # really interrupted
    resumed = subprocess.run([sys.executable, "-m", "threedgen.cli", "fit", "--resume", str(run)], cwd=REPO,
                             env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    final = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(final["state_dict"]["step_count"]) == steps
    assert sorted(p.name for p in (run / "ckpts").iterdir()) == ["last.ckpt"]
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, steps + 1))  # each step once
    m = json.loads((run / "metrics.json").read_text())
    assert m["processes"] == 2 and m["steps"] == steps
    assert run_dirs(tmp_path / "out") == [run]  # rank 1 wrote into rank 0's folder, not its own
    assert_intact(run)


def test_bench_row_times_the_amortized_step(prior, one_thread):
    from threedgen.benchmarks.run import bench_amortized_step

    parts = bench_amortized_step(prior, repeats=1)
    assert all(parts[k] > 0 for k in ("render", "prior", "backward+optimiser"))
    assert parts["evals"] == 3 * 8  # ASD: a CFG pair and the later-timestep eps for each of 4 x 2 views


def test_corpus_comparison_scores_seen_and_held_out_prompts(tmp_path):
    """benchmarks.amortized_corpus's table row: the corpus's prompts, then the held-out ones."""
    from threedgen.benchmarks.amortized_corpus import row

    (tmp_path / "metrics.json").write_text(json.dumps({"seconds_per_step": 0.3}))
    good = dict(shape_correct_views=4, colour_correct_views=4, iou=0.9)
    records = [{"prompt": "a red cube", "shape": "cube", "best_shape_by_iou": "cube", **good},
               {"prompt": "a green cone", "shape": "cone", "best_shape_by_iou": "mug", **good, "iou": 0.5},
               {"prompt": "a blue cone", "shape": "cone", "best_shape_by_iou": "cone", **good},  # held out
               {"prompt": "a blue cube", "shape": "cube", "best_shape_by_iou": "cube", **good}]  # neither
    assert row("sds", "world-6", tmp_path, records) == "| sds | world-6 | 1/2, 0.700 | 1/1, 0.900 | 0.30 |"


# --- quality (slow): train on a corpus, generate every world prompt, score seen and held out --------

QUALITY = [
    # (name, corpus, overrides, seen pass rate, held-out pass rate): issue 31's acceptance split,
    # 28 training prompts of 36 (configs/corpora/world-held-out.txt: the prior's 4 held-out
    # combinations and 4 more), the recipe as shipped
    pytest.param("world-28", "world-train.txt", [], 0.85, 0.60, marks=pytest.mark.slow, id="asd-split28"),
    # CI's case: two prompts, 300 steps (the timestep anneal shortened to match); both must come
    # out right
    pytest.param("world-2", None, ["trainer.max_steps=300", "system.guidance.t_max.until=300",
                                   "system.amortized.prompts_per_step=2"], 1.0, None,
                 marks=[pytest.mark.slow, pytest.mark.ci], id="asd-two-prompts"),
]


@pytest.mark.parametrize("name, corpus, overrides, seen_bar, held_bar", QUALITY)
def test_generator_recovers_its_prompts(tmp_path, sweep_results, capsys, name, corpus, overrides, seen_bar, held_bar):
    from threedgen.world.metrics import passes

    train = REPO / "configs" / "corpora" / corpus if corpus else corpus_file(tmp_path, ["a red cube", "a green cone"])
    run = fit(tmp_path, f"system.amortized.corpus={train}", "trainer.threads=1", *overrides, config=ASD)
    every = REPO / "configs" / "corpora" / "world-all.txt" if corpus else train
    capsys.readouterr()  # the fit's own output
    assert main(["generate", str(run), "--prompts", str(every)]) == 0
    results = json.loads(capsys.readouterr().out)
    seen = set(read_corpus(train))
    for r in results:
        sweep_results.append({"representation": f"amortized {name} {'seen' if r['prompt'] in seen else 'held-out'}", **r})
    rate = lambda rows: sum(passes(r) for r in rows) / len(rows)  # noqa: E731
    assert rate([r for r in results if r["prompt"] in seen]) >= seen_bar
    if held_bar is not None:
        assert rate([r for r in results if r["prompt"] not in seen]) >= held_bar
    assert max(r["generate_seconds"] for r in results[1:]) < 1.0  # one forward + the first render
