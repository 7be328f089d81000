import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY
from threedgen.cli import main

NERF = str(REPO / "configs" / "nerf-sds.yaml")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("threedgen: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("override, expect", [
    ("system.guidance.guidence_scale=3", "system.guidance.guidence_scale: unknown key; did you mean guidance_scale?"),
    ("trainer.max_steps=abc", "trainer.max_steps: expected an integer, got 'abc'"),
    ("system.representation.lr=fast", "system.representation.lr: expected a number, got 'fast'"),
])
def test_bad_config_exits_2(tmp_path, capsys, override, expect):
    rc = main(["fit", "--config", NERF, "prompt=a red cube", f"output_dir={tmp_path}", override])
    assert rc == 2
    assert expect in one_line_error(capsys)
    assert not any(tmp_path.iterdir())  # nothing was created


def test_unknown_prompt_word_subprocess(tmp_path):
    """The real console path: exit code 2, one line listing the vocabulary, no traceback."""
    r = subprocess.run([sys.executable, "-m", "threedgen.cli", "fit", "--config", NERF,
                        "prompt=a pink cube", f"output_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "'pink'" in err and "vocabulary is: a, an, the, red" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((REPO / "configs" / "nerf-sds.yaml").read_text() + "prompt: a red cube\n")
    assert main(["fit", "--resume", str(run)]) == 2
    assert "no checkpoint" in one_line_error(capsys)


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["fit", "--config", NERF, "prompt=a red cube", f"output_dir={blocker}/out", *TINY]) == 2
    assert "not writable" in one_line_error(capsys)


def test_missing_config_file(tmp_path, capsys):
    assert main(["fit", "--config", str(tmp_path / "nope.yaml"), "prompt=a red cube"]) == 2
    one_line_error(capsys)


def test_config_by_recipe_name(tmp_path, capsys):
    """--config takes a shipped recipe's name; an unknown one is one line naming the close ones.
    (The fit stops at the prompt check, after the recipe and its prior have loaded.)"""
    assert main(["fit", "--config", "gaussians-sds", "prompt=a pink cube", f"output_dir={tmp_path}"]) == 2
    assert "'pink'" in one_line_error(capsys)
    assert main(["fit", "--config", "gaussian-sds", "prompt=a red cube", f"output_dir={tmp_path}"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("threedgen: error: gaussian-sds: no such recipe or file; did you mean gaussians-sds, ")
    assert err.endswith("? (or give a path to a YAML file)")
    assert not any(tmp_path.iterdir())
