"""The Python API (threedgen/__init__.py, threedgen/api.py): a 2-step fit, export, evaluate, an
existing run reopened, and bad input raising the CLI's one-line errors."""

import json
import shlex
import subprocess
import sys

import pytest

import threedgen
from tests.helpers import REPO, TINY
from threedgen import config as C
from threedgen.api import dotted
from threedgen.cli import main, parser

# helpers.TINY as keyword overrides, with Python values
SMALL = {"test__n_frames": 4, "test__resolution": 32, "trainer__val_every": 0, "test__export": [], "test__eval_times": 2}


def test_keyword_overrides_are_the_cli_overrides():
    assert dotted(SMALL) == TINY
    assert dotted({"prompt": 'a "red": cube', "system__prior__path": None, "x": REPO}) == [
        'prompt="a \\"red\\": cube"', "system.prior.path=null", f'x="{REPO}"']
    cfg = C.load(["gaussians-sds"], dotted({"prompt": 'a "red": cube', "test__export": ("glb", "mp4")}))
    assert cfg.prompt == 'a "red": cube' and cfg.test.export == ("glb", "mp4")


def test_import_is_cheap():
    """``import threedgen`` loads neither torch nor Lightning; the API's names load torch but
    not Lightning, which only a fit imports."""
    code = ("import sys, threedgen; print('torch' in sys.modules); threedgen.Run; "
            "print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "False"]
    assert set(threedgen.__all__) <= set(dir(threedgen))
    for name in threedgen.__all__:
        assert getattr(threedgen, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        threedgen.nope


def test_fit_export_evaluate_open(tmp_path, capsys):
    """A 2-step fit of the default recipe: a run folder with the config asked for, the metrics
    the run wrote, and a cmd.txt that replays as the same config through the CLI. run.export
    writes the files the CLI's export writes; run.evaluate gives the CLI's eval numbers;
    Run.open reads the run folder back. (One test: a fit is the expensive part.)"""
    run = threedgen.fit("a red cube", trainer__max_steps=2, output_dir=tmp_path / "out", **SMALL)
    assert run.path.is_dir() and run.path.parent.name == "gaussians-sds"
    assert run.config.prompt == "a red cube" and run.config.trainer.max_steps == 2
    assert run.config.test.export == () and run.config.name == "gaussians-sds"
    assert run.metrics == json.loads((run.path / "metrics.json").read_text())
    assert run.metrics["steps"] == 2
    argv = shlex.split((run.path / "cmd.txt").read_text())
    assert argv[:4] == ["threedgen", "fit", "--config", "gaussians-sds"]
    args = parser().parse_args(argv[1:])
    assert C.load(args.config, args.overrides) == run.config

    files = run.export(["splat", "gif"], out=tmp_path / "api", frames=2, resolution=32)
    assert [f.name for f in files] == ["splat.ply", "turntable.gif"] and all(f.is_file() for f in files)
    assert main(["export", str(run.path), "--format", "splat", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "splat.ply").read_bytes() == files[0].read_bytes()

    metrics = run.evaluate(views=2)
    assert metrics["views"] == 2 and "iou" in metrics
    capsys.readouterr()
    assert main(["eval", str(run.path), "--views", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics

    opened = threedgen.Run.open(str(run.path))
    assert opened.path == run.path and opened.config == run.config
    assert opened.metrics == run.metrics
    assert opened.evaluate(views=2) == metrics


def cli_error(capsys, argv: list[str]) -> str:
    """The CLI's one line for ``argv``, without its ``threedgen: error: `` prefix."""
    capsys.readouterr()
    assert main(argv) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("threedgen: error: ") and err.count("\n") == 1, err
    return err[len("threedgen: error: "):-1]


def test_bad_input_raises_the_cli_errors(tmp_path, capsys):
    """Each mistake raises the exception whose message is the CLI's one line, and a fit that
    fails leaves no run folder. (Export options and formats are checked before the run's
    checkpoint is read, so a run folder with only its config.yaml serves.)"""
    out = tmp_path / "out"
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text((REPO / "configs" / "gaussians-sds.yaml").read_text() + "prompt: a red cube\n")
    run = threedgen.Run.open(folder)
    cases = [  # (API call, CLI argv, exception)
        (lambda: threedgen.fit("a pink cube", output_dir=out),
         ["fit", "--config", "gaussians-sds", "prompt=a pink cube", f"output_dir={out}"], threedgen.PromptError),
        (lambda: threedgen.fit("a red cube", trainer__maxsteps=3, output_dir=out),
         ["fit", "--config", "gaussians-sds", "prompt=a red cube", "trainer.maxsteps=3"], threedgen.ConfigError),
        (lambda: threedgen.fit("a red cube", trainer__max_steps=0),
         ["fit", "--config", "gaussians-sds", "prompt=a red cube", "trainer.max_steps=0"], threedgen.ConfigError),
        (lambda: threedgen.fit("", output_dir=out),
         ["fit", "--config", "gaussians-sds", "prompt=", f"output_dir={out}"], threedgen.ConfigError),
        (lambda: threedgen.fit("a red cube", config="gaussian-sds"),
         ["fit", "--config", "gaussian-sds", "prompt=a red cube"], threedgen.ConfigError),
        (lambda: threedgen.fit("a red cube", config=tmp_path / "nope.yaml"),
         ["fit", "--config", str(tmp_path / "nope.yaml"), "prompt=a red cube"], threedgen.ConfigError),
        (lambda: threedgen.fit("a red cube", system__prior__name="embedded", system__prior__path=str(tmp_path)),
         ["fit", "--config", "gaussians-sds", "prompt=a red cube", "system.prior.name=embedded",
          f"system.prior.path={tmp_path}"], threedgen.ConfigError),
        (lambda: threedgen.Run.open(tmp_path), ["eval", str(tmp_path)], threedgen.RunError),
        (lambda: run.evaluate(), ["eval", str(folder)], threedgen.RunError),  # no checkpoint
        (lambda: run.export(["fbx"]), ["export", str(folder), "--format", "fbx"], threedgen.ExportError),
        (lambda: run.export(["glb"], texture_size=4),
         ["export", str(folder), "--format", "glb", "texture_size=4"], threedgen.ConfigError),
    ]
    for call, argv, kind in cases:
        with pytest.raises(kind) as e:
            call()
        assert str(e.value) == cli_error(capsys, argv), argv
    with pytest.raises(threedgen.ConfigError, match=r"^views: must be at least 1, got 0$"):
        run.evaluate(views=0)
    assert not out.exists() or not any(out.rglob("config.yaml"))
