"""Packaging: pyproject.toml lists every package (systems/, benchmarks/ and configs/ install as
threedgen.systems, threedgen.benchmarks and threedgen.configs), and a non-editable install
fits a prompt by recipe name from another folder, with nothing but what the wheel ships.

The install test builds a wheel and installs it into a fresh virtual environment, so it is
marked slow and .ci/run runs it on its own:

    python -m pytest -m slow tests/test_packaging.py -n 0
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

MAPPED = {"threedgen.systems": "systems", "threedgen.benchmarks": "benchmarks", "threedgen.configs": "configs"}


def test_pyproject_lists_every_package():
    """``[tool.setuptools] packages`` is every folder of threedgen/ with an __init__.py, plus the
    three mapped folders (a package left out would be missing from a wheel, not from a checkout)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "threedgen").rglob("__init__.py")}
    assert setuptools["package-dir"] == MAPPED
    assert sorted(setuptools["packages"]) == sorted(found | set(MAPPED)), "add the package to pyproject.toml"
    assert all((REPO / folder / "__init__.py").is_file() for folder in MAPPED.values())


def _wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of the checkout (an in-tree build would reuse a stale build/)."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "outputs", "__pycache__", ".pytest_cache", "prior-training"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("threedgen-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_install_fits_by_recipe_name_from_another_folder(tmp_path):
    """`pip install .` (a wheel) into a fresh environment, then `threedgen fit --config
    gaussians-sds` in an empty folder: the recipes, the Lightning glue and the embedded prior and
    its world classifier all come from the installed package (no mesh export: it would double
    the test's time and proves nothing about packaging). The environment sees this one's
    dependencies through a .pth line, which adds their folder but not the .pth files in it (so
    not an editable install of the checkout)."""
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "threedgen/configs/gaussians-sds.yaml" in names and "threedgen/systems/fit.py" in names
    assert any(n.startswith("threedgen/priors/embedded/weights/unet/") for n in names)

    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(site, "threedgen-test-deps.pth").write_text("".join(f"{d}\n" for d in deps))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    where = subprocess.run(
        [python, "-c", "import threedgen.systems, threedgen.priors.diffusion as d, threedgen.config as C; "
                       "print(threedgen.systems.__file__, d.EMBEDDED_PATH, C.recipes()['gaussians-sds'])"],
        cwd=work, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where

    r = subprocess.run([env_dir / "bin" / "threedgen", "fit", "--config", "gaussians-sds", "prompt=a red cube",
                        "trainer.max_steps=2", "test.n_frames=2", "test.resolution=32", "trainer.val_every=0",
                        "test.eval_times=2", "test.export=[]"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    run = work / result["run"]
    assert run.parent == work / "outputs" / "gaussians-sds" and result["steps"] == 2
    assert result["iou"] > 0 and result["shape"] == "cube"  # the shipped world classifier judged it
    assert (run / "test" / "turntable.mp4").is_file() and (run / "ckpts" / "last.ckpt").is_file()
