import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Text embeddings and converted checkpoints go to a per-session folder, never the user's cache.
os.environ.setdefault("THREEDGEN_CACHE", tempfile.mkdtemp(prefix="threedgen-cache-"))

import importlib.util
import sys
from pathlib import Path

import pytest

_SWEEP: list[dict] = []
REPO = Path(__file__).resolve().parents[1]


def _checkout_subpackages() -> None:
    """pyproject.toml installs systems/, benchmarks/ and configs/ as threedgen.systems,
    threedgen.benchmarks and threedgen.configs; an editable install of this checkout maps them
    here. When threedgen itself is imported from this checkout (PYTHONPATH, ``python -m pytest``)
    but the environment's install maps those names elsewhere (another checkout's editable
    install) or nowhere, the tests would run another checkout's systems/ against this one's
    library: map them to this checkout's folders instead. CLI subprocesses started by tests
    still get the install's mapping."""
    import threedgen

    if Path(threedgen.__file__).resolve().parent != REPO / "threedgen":
        return  # an installed threedgen: its own subpackages
    for folder in ("systems", "benchmarks", "configs"):
        name = f"threedgen.{folder}"
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and Path(spec.origin).resolve().parent == REPO / folder:
            continue
        spec = importlib.util.spec_from_file_location(name, REPO / folder / "__init__.py",
                                                      submodule_search_locations=[str(REPO / folder)])
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        setattr(threedgen, folder, module)


_checkout_subpackages()


def pytest_configure(config):
    """Under pytest-xdist (the default run uses ``-n auto``) each worker runs one intra-op thread:
    the suite's small renders and fits are bound by per-op overhead, so two single-threaded
    workers finish it in about half the time one two-threaded process takes. OMP_NUM_THREADS
    reaches the CLI subprocesses some tests start."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """For tiny renderer workloads: a second intra-op thread gains nothing and, on a machine whose
    cores are busy with another job, makes each op wait on a descheduled worker (seen: 35 s
    instead of 4 s for a NeRF fit test)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def sweep_results(request) -> list[dict]:
    """Quality-sweep rows, printed as a table at the end of the session. They travel in the test
    report's user_properties, so that rows from pytest-xdist workers reach the controller."""
    rows: list[dict] = []
    yield rows
    request.node.user_properties.extend(("sweep_row", json.dumps(r, default=str)) for r in rows)


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        _SWEEP.extend(json.loads(v) for k, v in report.user_properties if k == "sweep_row")


def pytest_terminal_summary(terminalreporter):
    if not _SWEEP:
        return
    w = terminalreporter
    w.section("quality sweep")
    w.line(f"{'representation':<36} {'prompt':<20} {'shape':>5} {'colour':>6} {'IoU':>5} "
           f"{'best':>8} {'col.err':>7} {'handles':>7} {'CLIP R':>6} {'secs':>5} {'glb IoU':>7} {'glb PSNR':>8} "
           f"{'interior':>8} {'holes256':>8} {'raw256':>6} {'cov fit':>7} {'cov256':>6} {'hidden':>6}")
    for r in _SWEEP:
        w.line(f"{r['representation']:<36} {r['prompt']:<20} {r.get('shape_correct_views', '-'):>5} "
               f"{r.get('colour_correct_views', '-'):>6} {r.get('iou', 0):>5.2f} "
               f"{r['best_shape_by_iou']:>8} {r.get('colour_error', 0):>7.3f} {str(r.get('handles', '-')):>7} "
               f"{r.get('clip_r_precision', float('nan')):>6.2f} {r.get('fit_seconds', 0):>5.0f} "
               f"{r.get('export', {}).get('silhouette_iou', float('nan')):>7.3f} "
               f"{r.get('export', {}).get('psnr', float('nan')):>8.2f} "
               f"{r.get('export', {}).get('interior_psnr', float('nan')):>8.2f} "
               + " ".join(f"{r.get('porosity', {}).get(k, float('nan')):>{width}.4f}" for k, width in
                          [("interior_256", 8), ("raw_256", 6), ("coverage_fit", 7), ("coverage_256", 6),
                           ("hidden_256", 6)]))
