"""The search page at / in a real browser: Debian's headless Chromium driven by Playwright for Python.

Uploads a reference, types the change, clicks Search and checks the ranked grid; then picks an
example query and checks its targets are marked. The screenshot goes to $ZSCIR_SCREENSHOT_DIR (the
README's picture) or the test's temporary folder."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup)")

from tests.test_serve_api import N_IMAGES, served  # noqa: E402,F401 (module fixture: a tiny indexed gallery)
from tests.test_serve_process import start  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as the machine's own probe starts it: no sandbox (root), no GPU, no background traffic to outside hosts
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
K = 8

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="Chromium is not installed (make setup installs Debian's chromium as root)")


def test_upload_type_click_and_see_the_ranked_grid(served, tmp_path):  # noqa: F811
    names = served["names"]
    examples = tmp_path / "examples.jsonl"
    examples.write_text(json.dumps({"id": "e1", "reference": names[0], "text": "as a sketch",
                                    "targets": [names[3]]}) + "\n")
    proc, base = start(served, "--examples", str(examples))
    shots = Path(os.environ.get("ZSCIR_SCREENSHOT_DIR", tmp_path))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base)
            page.wait_for_function("document.getElementById('info').textContent.includes('gallery images')")
            assert f"{N_IMAGES} gallery images" in page.inner_text("#info")
            assert page.locator("#picker img").count() == N_IMAGES

            page.set_input_files("#upload", str(served["images"] / names[5]))
            page.fill("#text", "make it red")
            page.fill("#k", str(K))
            page.uncheck("#exclude-ref")
            page.select_option("#method", "image")  # the tiny random model: only the image method ranks it first
            page.click("#search")
            page.wait_for_selector("#results figure")
            figures = page.locator("#results figure")
            assert figures.count() == K
            assert figures.first.get_attribute("data-name") == names[5]  # the upload itself ranks first
            assert "#1" in figures.first.inner_text()
            assert "8 results" in page.inner_text("#status")
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "serve-page.png"), full_page=True)

            page.select_option("#method", "phi")
            page.select_option("#example", "e1")
            page.fill("#k", str(N_IMAGES))
            page.check("#exclude-ref")
            page.click("#search")
            page.wait_for_function(f"document.querySelectorAll('#results figure').length === {N_IMAGES - 1}")
            marked = page.locator("#results figure.target")
            assert marked.count() == 1 and marked.first.get_attribute("data-name") == names[3]
            assert "1 target found" in page.inner_text("#status")

            page.fill("#text", "x")
            page.fill("#k", "0")
            page.click("#search")
            page.wait_for_selector("#status.error")
            assert "k must be between 1" in page.inner_text("#status")
            assert errors == []
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
