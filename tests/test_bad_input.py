"""A catalogue of bad input, tried as a careless or hostile user would (README, "Bad input").

Every case prints exactly one line, ``threedgen: error: ...``, naming the problem, with no
traceback, exits with its code (2: bad input; 1: a fault during a run) and leaves the workspace
as it was: no file created or changed anywhere in it (so none outside the output root and no
partial file under a final name) and no run folder. Each case has a ``kind``, one of the README
paragraph's bold labels; ``test_readme_lists_what_the_catalogue_tries`` keeps the two in step.
Most cases fail in validation, before anything heavy loads; they share one finished tiny run.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.helpers import REPO, TINY
from threedgen.cli import main

NERF = str(REPO / "configs" / "nerf-sds.yaml")
GAUSSIANS = str(REPO / "configs" / "gaussians-sds.yaml")


class Payload:
    """What a hostile checkpoint holds: unpickling it calls open(path, "w"), creating a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@dataclass
class Workspace:
    root: Path  # everything a case may touch lies below it
    out: Path  # the output root (output_dir), a few levels down so that "../" stays inside root
    run: Path  # a copy of a finished tiny gaussians run, below out

    def ckpt(self) -> Path:
        return self.run / "ckpts" / "last.ckpt"


def write(name: str, text: str) -> Callable[[Workspace], None]:
    return lambda ws: (ws.root / name).write_text(text)


def damaged(how: str) -> Callable[[Workspace], None]:
    """Replace the run's checkpoint: truncated, random bytes, empty, a code payload, NaN means,
    no weights, not a dict."""
    def setup(ws: Workspace) -> None:
        ckpt = ws.ckpt()
        if how == "truncated":
            ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        elif how == "random":
            ckpt.write_bytes(random.Random(0).randbytes(4096))
        elif how == "empty":
            ckpt.write_bytes(b"")
        elif how == "payload":
            torch.save({"state_dict": {"x": Payload(ws.root / "pwned")}}, ckpt)
        elif how == "nan":
            c = torch.load(ckpt, weights_only=True)
            c["state_dict"]["representation.params.means"][0, 0] = float("nan")
            torch.save(c, ckpt)
        elif how == "no weights":
            torch.save({"state_dict": {}}, ckpt)
        elif how == "a list":
            torch.save([1, 2, 3], ckpt)
    return setup


def config_yaml(text: str) -> Callable[[Workspace], None]:
    return lambda ws: (ws.run / "config.yaml").write_text(text)


@dataclass
class Case:
    id: str
    kind: str  # a bold label of README's "Bad input" list
    argv: list[str]  # {out}, {run}, {root} are filled in
    expect: str  # a regular expression the one line matches
    rc: int = 2
    setup: Callable[[Workspace], None] | None = None
    full_disk: bool = False  # every fsync fails with ENOSPC, as on a full disk


def no_space(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fit(*overrides: str, config: str = NERF) -> list[str]:
    return ["fit", "--config", config, "prompt=a red cube", "output_dir={out}", *TINY, *overrides]


CASES = [
    # config
    Case("mistyped key", "config", fit("system.guidance.guidence_scale=3"),
         "system.guidance.guidence_scale: unknown key; did you mean guidance_scale"),
    Case("not an integer", "config", fit("trainer.max_steps=abc"), "trainer.max_steps: expected an integer, got 'abc'"),
    Case("not a number", "config", fit("system.representation.lr=fast"), "system.representation.lr: expected a number"),
    Case("unknown representation", "config", fit("system.representation.name=nerv"), "did you mean nerf"),
    Case("unknown export format", "config", fit("test.export=[fbx]"), "test.export: unknown format 'fbx'"),
    Case("override without =", "config", fit("trainer.max_steps"), "overrides are dotted key=value"),
    Case("empty YAML file", "config", ["fit", "--config", "{root}/empty.yaml"], "empty.yaml: the config file is empty",
         setup=write("empty.yaml", "")),
    Case("YAML list", "config", ["fit", "--config", "{root}/list.yaml"], "list.yaml: expected a mapping",
         setup=write("list.yaml", "- 1\n- 2\n")),
    Case("invalid YAML", "config", ["fit", "--config", "{root}/bad.yaml"], "bad.yaml: invalid YAML",
         setup=write("bad.yaml", "prompt: [a red cube\n")),
    Case("missing config file", "config", ["fit", "--config", "{root}/nope.yaml"], "nope.yaml: cannot read config file"),
    Case("no config", "config", ["fit", "prompt=a red cube"], "fit needs --config"),
    Case("unknown command", "config", ["fitt"], "invalid choice: 'fitt'"),
    Case("export without format", "config", ["export", "{run}"], "the following arguments are required: --format"),
    Case("eval views not a number", "config", ["eval", "{run}", "--views", "many"], "invalid int value: 'many'"),
    Case("unknown prior source", "config", fit("system.prior.name=stable-diffusion"),
         "system.prior.name: unknown prior source 'stable-diffusion' \\(known: embedded, embedded_video, diffusers, mvdream\\)"),
    Case("diffusers prior without path", "config", fit("system.prior.name=diffusers"),
         "system.prior.path: a diffusers prior needs a checkpoint"),
    Case("bad export option", "config", ["export", "{run}", "--format", "mp4", "shading=glossy"],
         "shading: 'glossy' is not one of"),
    Case("export: unknown format", "config", ["export", "{run}", "--format", "fbx"], "unknown format 'fbx'"),
    # range
    Case("negative resolution", "range", fit("system.camera.resolution=-4"),
         "system.camera.resolution: must be at least 8 pixels, got -4"),
    Case("huge resolution", "range", fit("system.camera.resolution=100000"),
         r"system.camera.resolution: 100000 is too large \(4 image\(s\) of 100000x100000 need about 447 GiB"),
    Case("huge NeRF grid", "range", fit("system.representation.resolution=100000"),
         r"system.representation: too large \(this nerf holds about 14,901,161 GiB of parameters"),
    Case("billions of Gaussians", "range", fit("system.representation.n=1000000000", config=GAUSSIANS),
         "this gaussians holds about 52 GiB"),
    Case("huge mesh", "range", fit("system.representation.subdivisions=20", config=str(REPO / "configs" / "mesh-sds.yaml")),
         "this mesh holds about"),
    Case("huge test frames", "range", fit("test.resolution=100000"), "test.resolution: 100000 is too large"),
    Case("NaN learning rate", "range", fit("system.representation.lr=.nan"),
         "system.representation.lr: expected a finite number, got nan"),
    Case("Inf guidance scale", "range", fit("system.guidance.guidance_scale=.inf"), "expected a finite number, got inf"),
    Case("negative learning rate", "range", fit("system.representation.lr=-0.1"),
         "system.representation.lr: must be at least 0, got -0.1"),
    Case("negative guidance scale", "range", fit("system.guidance.guidance_scale=-5"),
         "system.guidance.guidance_scale: must be at least 0, got -5"),
    Case("negative guidance ramp", "range", fit("system.guidance.guidance_scale={start: 5, end: -1, until: 9}"),
         "system.guidance.guidance_scale: must be at least 0"),
    Case("negative loss weight", "range", fit("system.representation.lambda_tv=-1"),
         "system.representation.lambda_tv: must be at least 0"),
    Case("negative steps", "range", fit("trainer.max_steps=-5"), "trainer.max_steps: must be at least 1, got -5"),
    Case("zero steps", "range", fit("trainer.max_steps=0"), "trainer.max_steps: must be at least 1, got 0"),
    Case("zero checkpoint interval", "range", fit("trainer.ckpt_every=0"), "trainer.ckpt_every: must be at least 1"),
    Case("negative seed", "range", fit("trainer.seed=-1"), "trainer.seed: must be at least 0"),
    Case("zero batch", "range", fit("system.camera.batch_size=0"), "system.camera.batch_size: must be at least 1"),
    Case("zero frames", "range", fit("test.n_frames=0"), "test.n_frames: must be at least 1"),
    Case("huge export grid", "range", ["export", "{run}", "--format", "glb", "grid=100000"],
         r"grid: 100000 is too large \(a 100000\^3 grid of density and colour needs about"),
    Case("eval zero views", "range", ["eval", "{run}", "--views", "0"], "eval --views: must be at least 1"),
    Case("NaN export option", "range", ["export", "{run}", "--format", "mp4", "elevation=.nan"],
         "elevation: expected a finite number"),
    # name
    Case("name climbs out", "name", fit("name=../../../x"), r"name: '../../../x' is not a plain relative path"),
    Case("absolute name", "name", fit("name={root}/abs"), r"name: '.*/abs' is not a plain relative path"),
    # prompt
    Case("empty prompt", "prompt", fit("prompt="), "prompt: the prompt is empty"),
    Case("blank prompt", "prompt", fit("prompt=   "), "prompt: the prompt is empty"),
    Case("unknown word", "prompt", fit("prompt=a pink cube"), "unknown word 'pink'; the prior's vocabulary is: a, an"),
    Case("unknown negative word", "prompt", fit("negative_prompt=a pink sphere"), "unknown word 'pink'"),
    Case("emoji", "prompt", fit("prompt=a red cube \N{GAME DIE}"), "unreadable character"),
    Case("too long", "prompt", fit("prompt=a red cube a red cube a red cube"),
         "11 tokens, but the text encoder reads at most 8"),
    # folder
    Case("unwritable output folder", "folder", fit("output_dir={root}/file/out"), "is not writable",
         setup=write("file", "not a folder")),
    Case("export folder under a file", "folder", ["export", "{run}", "--format", "splat", "--out", "{root}/file/x"],
         "cannot create the output folder", setup=write("file", "not a folder")),
    Case("resume with overrides", "folder", ["fit", "--resume", "{run}", "trainer.max_steps=9"], "takes no overrides"),
    Case("resume a non-run", "folder", ["fit", "--resume", "{root}"], "not a run folder"),
    Case("resume without checkpoint", "folder", ["fit", "--resume", "{run}"], "no checkpoint",
         setup=lambda ws: ws.ckpt().unlink()),
    Case("eval a non-run", "folder", ["eval", "{root}"], "not a run folder"),
    Case("init_from a non-run", "folder", fit("init_from={root}/nope", config=GAUSSIANS), "not a run folder"),
    Case("resume a damaged config.yaml", "folder", ["fit", "--resume", "{run}"], "config.yaml: invalid YAML",
         setup=config_yaml("prompt: [\n")),
    # checkpoint
    Case("resume truncated", "checkpoint", ["fit", "--resume", "{run}"], r"last.ckpt: not a readable checkpoint \(damaged\)",
         setup=damaged("truncated")),
    Case("resume random bytes", "checkpoint", ["fit", "--resume", "{run}"], "not a readable checkpoint",
         setup=damaged("random")),
    Case("resume empty file", "checkpoint", ["fit", "--resume", "{run}"], r"not a readable checkpoint \(damaged\)",
         setup=damaged("empty")),
    Case("resume code payload", "checkpoint", ["fit", "--resume", "{run}"], "holds more than tensors and plain data",
         setup=damaged("payload")),
    Case("resume NaN", "checkpoint", ["fit", "--resume", "{run}"],
         r"non-finite values \(NaN or Inf\) in representation.params.means", setup=damaged("nan")),
    Case("eval truncated", "checkpoint", ["eval", "{run}"], r"not a readable checkpoint \(damaged\)",
         setup=damaged("truncated")),
    Case("eval code payload", "checkpoint", ["eval", "{run}"], "holds more than tensors", setup=damaged("payload")),
    Case("eval NaN", "checkpoint", ["eval", "{run}"], "non-finite values", setup=damaged("nan")),
    Case("eval no weights", "checkpoint", ["eval", "{run}"], "weights do not fit the run's gaussians representation",
         setup=damaged("no weights")),
    Case("eval not a dict", "checkpoint", ["eval", "{run}"], "not a threedgen checkpoint", setup=damaged("a list")),
    Case("export code payload", "checkpoint", ["export", "{run}", "--format", "glb"], "holds more than tensors",
         setup=damaged("payload")),
    Case("export NaN splat", "checkpoint", ["export", "{run}", "--format", "splat"], "non-finite values",
         setup=damaged("nan")),
    Case("export NaN glb", "checkpoint", ["export", "{run}", "--format", "glb", "mp4"], "non-finite values",
         setup=damaged("nan")),
    Case("init_from code payload", "checkpoint", fit("init_from={run}", config=GAUSSIANS), "holds more than tensors",
         setup=damaged("payload")),
    Case("init_from damaged", "checkpoint", fit("init_from={run}", config=GAUSSIANS), "not a readable checkpoint",
         setup=damaged("truncated")),
    # divergence: a real fit that stops at step 1, before its first checkpoint, so it keeps no folder
    # disk (the checkpoint writes of a fit on a full disk: tests/test_faults.py)
    Case("full disk: fit", "disk", fit(), r"cannot write .*config.yaml \(No space left on device\)", rc=1,
         full_disk=True),
    Case("full disk: export", "disk", ["export", "{run}", "--format", "splat"],
         r"cannot write .*splat.ply \(No space left on device\); splat.ply is left as it was", rc=1, full_disk=True),
    Case("diverging fit", "divergence",
         fit("trainer.max_steps=3", "system.guidance.guidance_scale=1e30", "system.representation.lr_means=1e6",
             config=GAUSSIANS),
         r"step 1: the loss became non-finite \(NaN or Inf\); training stopped, before its first checkpoint", rc=1),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-step gaussians run (its checkpoint, config.yaml, metrics), copied by each case."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["fit", "--config", GAUSSIANS, "prompt=a red cube", f"output_dir={out}", *TINY,
                 "trainer.max_steps=2", "trainer.ckpt_every=1"]) == 0
    (run,) = out.glob("*/*@*")
    return run


def snapshot(root: Path) -> tuple[dict, set]:
    """({file: (size, mtime)}, {run folders}) below root."""
    files = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    return files, {p for p in root.rglob("*@*") if p.is_dir()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, finished_run, capsys, monkeypatch):
    out = tmp_path / "a" / "b" / "c" / "outputs"
    ws = Workspace(tmp_path, out, out / "gaussians-sds" / finished_run.name)
    shutil.copytree(finished_run, ws.run)
    if case.setup:
        case.setup(ws)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    if case.full_disk:
        monkeypatch.setattr(os, "fsync", no_space)
    argv = [a.replace("{out}", str(ws.out)).replace("{run}", str(ws.run)).replace("{root}", str(ws.root))
            for a in case.argv]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == case.rc, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("threedgen: error: "), err
    assert "Traceback" not in err
    assert re.search(case.expect, lines[0]), lines[0]
    after = snapshot(tmp_path)
    assert after[0] == before[0], "files created, changed or removed"  # also: no payload ran
    assert after[1] == before[1], "run folder left behind"
    assert not (tmp_path / "pwned").exists()


def test_readme_lists_what_the_catalogue_tries():
    """README's "Bad input" list names each kind of case, and the catalogue tries each kind."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Bad input", 1)[1].split("\n#", 1)[0]
    kinds = set(re.findall(r"^- \*\*(\w+)\*\*:", section, flags=re.M))
    assert kinds == {c.kind for c in CASES}
    assert len(CASES) >= 40


def test_no_loader_runs_code():
    """Every torch.load in the project loads weights only (each call on one line, so that this
    test sees its arguments), Lightning's resume too, and nothing loads through Lightning's
    loaders, which unpickle."""
    sources = [p for d in ("threedgen", "systems", "benchmarks", "tests") for p in (REPO / d).rglob("*.py")]
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"weights_only\s*=\s*False|load_from_check[p]oint|pl_loa[d]", line), f"{path}:{n}"
            if re.search(r"torch\.load\(", line):
                assert "weights_only=True" in line, f"{path}:{n}: {line}"
    fit_source = (REPO / "systems" / "fit.py").read_text()
    assert re.search(r"trainer\.fit\(.*weights_only=True", fit_source)


def console(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "THREEDGEN_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "threedgen.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_console_success_is_quiet_and_bad_input_is_one_line(tmp_path, finished_run):
    """The real console path: a successful fit writes nothing to stderr (no Lightning tips or
    warnings); a bad config and a hostile checkpoint give one line each, and the payload never runs."""
    r = console("fit", "--config", GAUSSIANS, "prompt=a red cube", f"output_dir={tmp_path / 'out'}", *TINY,
                "trainer.max_steps=1", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = console("fit", "--config", NERF, "prompt=a red cube", "system.representation.lr=.nan", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expected a finite number" in r.stderr, r.stderr
    run = tmp_path / "hostile"
    shutil.copytree(finished_run, run)
    damaged("payload")(Workspace(tmp_path, tmp_path, run))
    r = console("eval", str(run), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds more than tensors" in r.stderr, r.stderr
    assert not (tmp_path / "pwned").exists()


def test_files_keep_the_umask_mode(tmp_path, finished_run):
    """config.yaml, metrics.json and exports come out as the umask says (0644 under 022), not 0600."""
    for f in ("config.yaml", "cmd.txt", "metrics.json", "logs/metrics.csv"):
        assert (finished_run / f).stat().st_mode & 0o777 == 0o666 & ~current_umask(), f
    assert main(["export", str(finished_run), "--format", "splat", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "splat.ply").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_one_tokenizer_for_the_vocabulary_check_the_encoder_and_evaluation():
    """'a red cube.' is the prompt 'a red cube' everywhere: evaluation finds its shape and colour,
    the prior accepts it and encodes the same text (the period is no unknown token)."""
    from threedgen.config import PriorConfig
    from threedgen.world.metrics import parse_motion, parse_prompt
    from threedgen.registry import load_prior

    assert parse_prompt("a red cube.") == ("cube", "red")
    assert parse_prompt("A blue, ball!") == ("sphere", "blue")
    assert parse_motion("a red cube, spinning.") == "spinning"
    prior = load_prior(PriorConfig())
    prior.check_prompt("a red cube.")
    torch.testing.assert_close(prior.encode_prompts(["a red cube."]), prior.encode_prompts(["a red cube"]))
