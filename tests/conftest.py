import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Text embeddings and converted checkpoints go to a per-session folder, never the user's cache.
os.environ.setdefault("THREEDGEN_CACHE", tempfile.mkdtemp(prefix="threedgen-cache-"))

import pytest

_SWEEP: list[dict] = []


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
           f"{'best':>8} {'col.err':>7} {'handles':>7} {'secs':>5} {'glb IoU':>7} {'glb PSNR':>8} {'interior':>8} "
           f"{'holes256':>8} {'raw256':>6} {'cov fit':>7} {'cov256':>6}")
    for r in _SWEEP:
        w.line(f"{r['representation']:<36} {r['prompt']:<20} {r.get('shape_correct_views', '-'):>5} "
               f"{r.get('colour_correct_views', '-'):>6} {r.get('iou', 0):>5.2f} "
               f"{r['best_shape_by_iou']:>8} {r.get('colour_error', 0):>7.3f} {str(r.get('handles', '-')):>7} "
               f"{r.get('fit_seconds', 0):>5.0f} {r.get('export', {}).get('silhouette_iou', float('nan')):>7.3f} "
               f"{r.get('export', {}).get('psnr', float('nan')):>8.2f} "
               f"{r.get('export', {}).get('interior_psnr', float('nan')):>8.2f} "
               + " ".join(f"{r.get('porosity', {}).get(k, float('nan')):>{width}.4f}" for k, width in
                          [("interior_256", 8), ("raw_256", 6), ("coverage_fit", 7), ("coverage_256", 6)]))
