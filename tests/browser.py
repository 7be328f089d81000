"""A real headless browser for the report tests: Debian's chromium through selenium and
chromedriver (``apt-get install chromium chromium-driver``; .ci/run installs them). WebGL runs
on SwiftShader, Chromium's CPU renderer, as on a machine without a GPU."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", "--window-size=1280,2200", "--hide-scrollbars"]


def chromium_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips without them unless THREEDGEN_BROWSER_TESTS=required
    (CI sets it: there a missing browser is a failure)."""
    found = [shutil.which(n) for n in ("chromium", "chromedriver")]
    if None in found or importlib.util.find_spec("selenium") is None:
        message = "needs chromium, chromedriver and selenium (apt-get install chromium chromium-driver)"
        if os.environ.get("THREEDGEN_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    return found[0], found[1]


def open_browser():
    """Headless Chromium with its console log kept, and no network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    # Offline: a page that reaches for the network logs a failed load (a console error).
    chrome.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    return chrome


def wait_for(driver, script: str, timeout: float = 60.0, what: str = ""):
    """Poll ``script`` (a JS expression) until it is truthy -> its value; fails after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what or script}"
        time.sleep(0.2)


def console_messages(driver) -> list[dict]:
    """The console messages and failed loads since the last call ({level, message})."""
    return [{"level": m["level"], "message": m["message"]} for m in driver.get_log("browser")]


def media_states(driver) -> dict:
    return driver.execute_script("""return {
        images: [...document.images].map((i) => ({src: i.getAttribute("src"), complete: i.complete,
                                                  naturalWidth: i.naturalWidth})),
        videos: [...document.querySelectorAll("video")].map((v) => ({src: v.getAttribute("src"),
                 readyState: v.readyState, videoWidth: v.videoWidth, error: v.error && v.error.code}))};""")


def canvas_pixels(driver, selector: str) -> np.ndarray:
    """[H, W, 4] uint8: what a canvas shows, read back through toDataURL."""
    from PIL import Image

    url = driver.execute_script(f"return document.querySelector({selector!r}).toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


SCENE_VERTICES = """
const points = [], scene = window.__viewer.scene;
scene.updateMatrixWorld(true);
scene.traverse((o) => {
  if (!o.isMesh) return;
  const p = o.geometry.attributes.position, m = o.matrixWorld.elements;
  for (let i = 0; i < p.count; i++) {
    const x = p.getX(i), y = p.getY(i), z = p.getZ(i);
    points.push([m[0] * x + m[4] * y + m[8] * z + m[12], m[1] * x + m[5] * y + m[9] * z + m[13],
                 m[2] * x + m[6] * y + m[10] * z + m[14]]);
  }
});
return points;
"""


def scene_vertices(driver) -> np.ndarray:
    """[N, 3] the loaded glb's vertices in three.js's world frame (y up), as the viewer placed them."""
    return np.asarray(driver.execute_script(SCENE_VERTICES), dtype=np.float64)


def screenshot(driver, path: Path, element: str | None = None) -> Path:
    from selenium.webdriver.common.by import By

    path.parent.mkdir(parents=True, exist_ok=True)
    if element:
        driver.find_element(By.CSS_SELECTOR, element).screenshot(str(path))
    else:
        driver.save_screenshot(str(path))
    return path
