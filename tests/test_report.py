"""The run report (report.html, the index of runs), TensorBoard logs and progress bars.

The report is checked in a real headless Chromium (tests/browser.py) on a short real fit of "a
green cone" on the embedded prior: the page loads with no console errors, every image and video
plays, the 3D view draws the glb and three.js's Box3 of it is exposed, and the index sorts.
The fit, its export and the browser session are made once per test session and shared by the
pytest-xdist workers (a file lock; the pattern pytest-xdist documents)."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from tests import browser
from tests.helpers import REPO, TINY, run_dirs
from threedgen.cli import main

GAUSSIANS = str(REPO / "configs" / "gaussians-sds.yaml")
CONE = ["prompt=a green cone", "trainer.max_steps=120", "trainer.val_every=40", "trainer.ckpt_every=120",
        "test.n_frames=16", "test.resolution=64", "test.export=[]"]
EXPORT = ["--format", "glb", "mp4", "texture_size=256", "max_faces=4000", "grid=64", "frames=12", "resolution=128"]


def shared(tmp_path_factory, name: str, build) -> dict:
    """``build(folder) -> dict`` run once per session (across xdist workers), its result kept
    as JSON in a folder every worker sees."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if re.fullmatch(r"popen-gw\d+", base.name) else base
    folder, result = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result.write_text(json.dumps(build(folder)))
    return json.loads(result.read_text())


def build_runs(root: Path) -> dict:
    """A 120-step cone (about 10 s), its end-of-fit report kept aside, then a glb and mp4
    exported and the report written again; a 2-step cube beside it; the index of both."""
    out = root / "outputs"
    assert main(["fit", "--config", GAUSSIANS, f"output_dir={out}", *CONE]) == 0
    (cone,) = run_dirs(out)
    shutil.copy(cone / "report.html", root / "fit-report.html")
    assert main(["export", str(cone), *EXPORT]) == 0
    assert main(["report", str(cone)]) == 0
    assert main(["fit", "--config", GAUSSIANS, f"output_dir={out}", "prompt=a red cube", "trainer.max_steps=2",
                 *TINY]) == 0
    (cube,) = set(run_dirs(out)) - {cone}
    assert main(["report", str(out)]) == 0
    return {"outputs": str(out), "cone": str(cone), "cube": str(cube), "fit_report": str(root / "fit-report.html")}


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict:
    return {k: Path(v) for k, v in shared(tmp_path_factory, "report-runs", build_runs).items()}


# ---------------------------------------------------------------------- without a browser
def test_fit_writes_a_report_and_export_adds_the_3d_view(runs):
    cone = runs["cone"]
    at_fit = runs["fit_report"].read_text()
    assert "No glb exported" in at_fit and "viewer.min.js" not in at_fit  # test.export=[]: no glb yet
    page = (cone / "report.html").read_text()
    assert "a green cone" in page and "gaussians-sds" in page
    links = set(re.findall(r'(?:href|src)="([^"]+)"', page))
    exported = {p.relative_to(cone).as_posix() for p in (cone / "export").rglob("*") if p.is_file()}
    assert exported and exported <= links, "every export is linked"
    assert {"test/turntable.mp4", "export/turntable.mp4", "report_files/curves.png", "report_files/glb.js",
            "report_files/viewer.min.js", "val/step00040.png", "val/step00120.png"} <= links
    for link in links - {"data:,"}:  # all local, all there
        assert not re.match(r"[a-z]+://", link), link
        assert (cone / link).exists(), link
    assert (cone / "report_files" / "three.LICENSE.txt").read_text().startswith("The MIT License")


def test_the_index_lists_every_run(runs):
    page = (runs["outputs"] / "index.html").read_text()
    for run in (runs["cone"], runs["cube"]):
        assert f'{run.relative_to(runs["outputs"]).as_posix()}/report.html' in page
        assert (run / "report.html").is_file()


def test_vendored_viewer_is_small_and_licensed():
    from threedgen.report.build import STATIC

    assert (STATIC / "viewer.min.js").stat().st_size < 1_000_000
    assert "three.js" in (STATIC / "viewer.min.js").read_text()[:200]
    assert "MIT" in (STATIC / "three.LICENSE.txt").read_text()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("threedgen: error: ") and "\n" not in err, err
    return err


def test_report_bad_input_is_one_line(tmp_path, capsys, runs):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run folders below it" in one_line_error(capsys)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in one_line_error(capsys)
    run = tmp_path / "run"
    shutil.copytree(runs["cube"], run)
    (run / "metrics.json").write_text("{not json")
    assert main(["report", str(run)]) == 2
    assert "metrics.json: not valid JSON" in one_line_error(capsys)
    (run / "config.yaml").write_text("prompt: [unclosed\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "config.yaml: not valid YAML" in one_line_error(capsys)


def test_tensorboard_logs_every_step_and_the_validation_images(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["cone"] / "logs" / "tensorboard"), size_guidance={"images": 0}).Reload()
    csv_rows = (runs["cone"] / "logs" / "metrics.csv").read_text().splitlines()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 121))
    first = dict(zip(csv_rows[0].split(","), csv_rows[1].split(",")))
    assert events.Scalars("grad")[0].value == pytest.approx(float(first["grad"]), rel=1e-6)
    images = events.Images("val")
    assert [i.step for i in images] == [40, 80, 120]
    assert (images[0].width, images[0].height) == (256, 64)


def test_tensorboard_hides_the_steps_a_resume_runs_again(tmp_path, monkeypatch):
    """A run resumed from its step-2 checkpoint after logging steps 1-4 logs steps 3-4 again;
    TensorBoard shows each step once, with the resumed session's values (as metrics.csv)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from threedgen.systems import fit as F
    from threedgen import config as C
    from threedgen.runs import create_run_dir, save_config

    def load(*overrides):
        return C.load([GAUSSIANS], ["prompt=a red cube", "trainer.max_steps=4", "trainer.ckpt_every=2",
                                    f"output_dir={tmp_path}", *TINY, *overrides])

    save = F.AtomicCheckpoint.save

    def save_and_keep(self, trainer):  # keep each checkpoint: the resume starts from step 2's
        save(self, trainer)
        shutil.copy(self.path, tmp_path / f"step{int(trainer.lightning_module.step_count)}.ckpt")

    monkeypatch.setattr(F.AtomicCheckpoint, "save", save_and_keep)
    cfg = load()
    run = create_run_dir(cfg)
    save_config(run, cfg, [])
    F.fit(cfg, run)
    first = (run / "logs" / "metrics.csv").read_text().splitlines()
    F.fit(load("system.guidance.guidance_scale=20"), run, ckpt_path=tmp_path / "step2.ckpt")  # steps 3-4 again
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    loss = EventAccumulator(str(run / "logs" / "tensorboard")).Reload().Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert rows[:3] == first[:3] and rows[3:] != first[3:]  # steps 3-4 differ: another guidance scale
    assert [e.value for e in loss] == pytest.approx([float(r.split(",")[1]) for r in rows[1:]], rel=1e-6)


# ---------------------------------------------------------------------- progress bars
class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that the progress bars draw into it."""

    def isatty(self) -> bool:
        return True


def test_export_shows_progress_on_a_terminal(runs, tmp_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["export", str(runs["cone"]), "--out", str(tmp_path), "--format", "glb", "mp4",
                 "texture_size=64", "grid=32", "frames=8", "resolution=32"]) == 0
    shown = terminal.getvalue()
    assert re.search(r"mesh: surface and texture bake: \d+ views \[", shown), shown
    assert re.search(r"mesh: fidelity: +\d+%\|.*\| \d/8 ", shown), shown
    assert re.search(r"turntable\.mp4: +\d+%\|.*\| \d/8 ", shown), shown
    assert capsys.readouterr().out.splitlines()[0] == str(tmp_path / "mesh.glb")  # the files, on stdout


def test_export_shows_no_progress_in_a_pipe(runs, tmp_path, capsys):
    assert main(["export", str(runs["cone"]), "--out", str(tmp_path), "--format", "mp4", "frames=4",
                 "resolution=32"]) == 0
    assert capsys.readouterr().err == ""


def test_fit_shows_its_end_phases_on_a_terminal(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["fit", "--config", GAUSSIANS, f"output_dir={tmp_path}", "prompt=a red cube",
                 "trainer.max_steps=2", *TINY]) == 0
    shown = terminal.getvalue()
    assert re.search(r"test renders: +\d+%\|.*\| \d/4 ", shown), shown
    assert "metrics [00:" in shown and "report [00:" in shown, shown


def test_sampling_shows_progress_on_a_terminal(monkeypatch):
    import torch

    from threedgen.cameras import make_cameras
    from threedgen.priors.cfg import Conditioning
    from threedgen.priors.diffusion import EMBEDDED_PATH
    from threedgen.registry import prior_from_pretrained
    from threedgen.priors.sampling import ddim_sample

    prior = prior_from_pretrained(EMBEDDED_PATH)
    cams = make_cameras([20.0], [0.0], 2.8, 30.0, prior.resolution)
    cond = Conditioning(prior.encode_prompts(["a red cube"]), prior.encode_prompts([""]),
                        prior.camera_condition(cams, 1), prior.camera_condition(None, 1))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    ddim_sample(prior, cond, steps=4, generator=torch.Generator().manual_seed(0), progress="samples")
    assert re.search(r"samples: +\d+%\|.*\| \d/4 ", terminal.getvalue()), terminal.getvalue()


# ---------------------------------------------------------------------- in the browser
def browse(root: Path, runs: dict) -> dict:
    """Open the cone's report and the index in headless Chromium; what the page shows, as JSON."""
    driver = browser.open_browser()
    try:
        return {"report": browse_report(driver, Path(runs["cone"]), root),
                "index": browse_index(driver, Path(runs["outputs"]), root)}
    finally:
        driver.quit()


def browse_report(driver, run: Path, shots: Path) -> dict:
    driver.get((run / "report.html").as_uri())
    browser.wait_for(driver, "window.__viewer && (window.__viewer.ready || window.__viewer.error)", 90, "the 3D view")
    browser.wait_for(driver, "[...document.querySelectorAll('video')].every((v) => v.readyState >= 2 || v.error)",
                     30, "the videos")
    pixels = browser.canvas_pixels(driver, "#viewer canvas") if driver.execute_script(
        "return !!document.querySelector('#viewer canvas')") else np.zeros((1, 1, 4), np.uint8)
    np.save(shots / "canvas.npy", pixels)
    result = {"console": browser.console_messages(driver), **browser.media_states(driver),
              "viewer": driver.execute_script("return {ready: __viewer.ready, error: __viewer.error, bbox: __viewer.bbox};"),
              "vertices": browser.scene_vertices(driver).tolist() if driver.execute_script("return __viewer.ready;") else []}
    browser.screenshot(driver, shots / "report.png")
    browser.screenshot(driver, shots / "viewer.png", "#viewer")
    return result


def browse_index(driver, outputs: Path, shots: Path) -> dict:
    driver.get((outputs / "index.html").as_uri())
    browser.wait_for(driver, "[...document.images].every((i) => i.complete)", 30, "the thumbnails")
    column = driver.execute_script(
        "return [...document.querySelectorAll('#runs th')].findIndex((th) => th.textContent === 'IoU');")
    prompts, ious = [], []
    for _ in range(2):  # ascending, then descending
        driver.execute_script(f"document.querySelectorAll('#runs th')[{column}].click();")
        rows = driver.execute_script("return [...document.querySelectorAll('#runs tbody tr')].map((r) => "
                                     f"[r.cells[1].textContent, r.cells[{column}].textContent]);")
        prompts.append([r[0] for r in rows])
        ious.append([float(r[1]) for r in rows])
    browser.screenshot(driver, shots / "index.png")
    return {"console": browser.console_messages(driver), **browser.media_states(driver), "prompts": prompts,
            "ious": ious}


@pytest.fixture(scope="session")
def page(tmp_path_factory, runs) -> dict:
    browser.chromium_or_skip()
    return shared(tmp_path_factory, "report-browser", lambda root: {**browse(root, runs), "shots": str(root)})


def test_report_page_loads_without_console_errors(page):
    """Also: every file the page names is there, and it needs no network (the browser is
    offline: a remote load would be a failed load, a console error)."""
    errors = [m for m in page["report"]["console"] if m["level"] == "SEVERE"]
    assert not errors, errors


def test_every_image_and_video_loads(page):
    report = page["report"]
    assert len(report["images"]) >= 4 and len(report["videos"]) == 2  # curves, 3 validation renders; 2 turntables
    for image in report["images"]:
        assert image["complete"] and image["naturalWidth"] > 0, image
    for video in report["videos"]:
        assert video["readyState"] >= 2 and video["videoWidth"] > 0, video  # H.264 plays in Debian's chromium


def test_the_3d_view_draws_the_glb(page, runs):
    viewer = page["report"]["viewer"]
    assert viewer["ready"] and viewer["error"] is None, viewer
    pixels = np.load(Path(page["shots"]) / "canvas.npy")[..., :3].reshape(-1, 3).astype(int)
    background = (pixels == [0xEE, 0xEE, 0xEE]).all(-1)
    assert 0.03 < 1 - background.mean() < 0.9, "the object covers part of the view"
    assert len(np.unique(pixels[~background], axis=0)) > 50, "shaded, not one flat colour"
    # the bounding box three.js reports is the glb's own (trimesh reads the same bounds)
    mesh = trimesh.load(runs["cone"] / "export" / "mesh.glb", force="mesh")
    np.testing.assert_allclose([viewer["bbox"]["min"], viewer["bbox"]["max"]], mesh.bounds, atol=1e-5)


@pytest.mark.xfail(strict=True, reason="issue 29 axes: glb is still written z-up on this branch; the y-up "
                                       "export fix is on another branch. Remove this mark when it is merged")
def test_the_cone_stands_apex_up_along_y_in_three_js(page):
    """glTF is y-up. The world's cone is wider (1.24) than tall (1.1), so its bounding box is
    not tallest along its axis; what tells up is its apex: along the up axis, the vertices in the
    top tenth of the box lie near the axis and those in the bottom tenth spread to the base's rim."""
    vertices = np.asarray(page["report"]["vertices"])
    size = np.asarray(page["report"]["viewer"]["bbox"]["size"])
    assert vertices.shape[0] > 100 and size.min() > 0.5  # a whole object, as the Box3 says

    def taper(axis: int, sign: float) -> float:
        """Spread of the top tenth of the vertices along sign * axis over the bottom tenth's."""
        h = sign * vertices[:, axis]
        others = np.delete(vertices, axis, 1)
        spread = lambda sel: np.linalg.norm(others[sel] - others[sel].mean(0), axis=1).mean()  # noqa: E731
        return spread(h > h.max() - 0.1 * np.ptp(h)) / spread(h < h.min() + 0.1 * np.ptp(h))

    tapers = {(axis, sign): taper(axis, sign) for axis in range(3) for sign in (1.0, -1.0)}
    apex = min(tapers, key=tapers.get)
    assert apex == (1, 1.0), f"the apex points along {'+-'[apex[1] < 0]}{'xyz'[apex[0]]} (tapers {tapers})"
    assert tapers[(1, 1.0)] < 0.5


def test_the_index_sorts_by_a_column(page):
    index = page["index"]
    assert not [m for m in index["console"] if m["level"] == "SEVERE"], index["console"]
    assert len(index["images"]) == 2 and all(i["naturalWidth"] > 0 for i in index["images"])
    ascending, descending = index["ious"]
    assert ascending == sorted(ascending) and descending == sorted(ascending, reverse=True)
    assert ascending[0] != ascending[1] and index["prompts"][0] == index["prompts"][1][::-1]
    assert set(index["prompts"][0]) == {"a green cone", "a red cube"}
