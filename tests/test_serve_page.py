"""The page of ``clipseg serve`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

CI installs chromium (.ci/run); elsewhere the test is skipped when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from helpers import noise, save, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "serve.png"
httpx = pytest.importorskip("httpx", reason="the dev extra's httpx polls the server")
sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra's playwright drives the browser")
pytestmark = [pytest.mark.usefixtures("offline"),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")]


@pytest.fixture
def url(checkpoint: Path) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "serve", "--weights", str(checkpoint),
                                "--precision", "fp32", "--port", str(port)], env=subprocess_env())
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while True:  # poll /healthz, bounded
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < end, "the server did not start"
        time.sleep(0.05)
    yield url
    process.kill()
    process.wait()


def test_page_segments_recuts_in_the_browser_and_downloads_a_cutout(url, tmp_path):
    photo = save(noise((160, 120), seed=3), tmp_path / "photo.png")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True)
        requests = []
        page.on("request", lambda request: requests.append(request.url) if "/v1/segment" in request.url else None)
        page.goto(url + "/")
        assert page.get_by_label("What to cut out").is_visible()  # inputs have labels
        page.set_input_files("#image", str(photo))
        page.get_by_label("What to cut out").fill("nothing at all")
        page.get_by_label("Not this").fill("car")
        page.get_by_role("button", name="Segment").click()
        page.wait_for_selector("#view[data-state=ready], #view[data-state=error]")
        assert page.locator("#error").is_hidden(), page.locator("#error").text_content()

        page.get_by_label("Mask").check()
        shown = page.evaluate("document.getElementById('view').toDataURL()")
        page.locator("#threshold").fill("0.2")
        assert page.evaluate("document.getElementById('view').toDataURL()") != shown  # re-cut in the browser
        assert len(requests) == 1  # ... with no new request
        page.get_by_label("Overlay").check()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

        with page.expect_download() as download:
            page.get_by_role("button", name="Download cut-out PNG").click()
        cutout = Image.open(BytesIO(Path(download.value.path()).read_bytes()))
        assert (cutout.format, cutout.mode, cutout.size) == ("PNG", "RGBA", (160, 120))

        page.get_by_label("What to cut out").fill(" , ")
        page.get_by_role("button", name="Segment").click()
        assert "type what to cut out" in page.locator("#error").text_content()  # errors shown in the page
        browser.close()
    if os.environ.get("CLIPSEG_SAVE_SCREENSHOT"):  # the docs' picture: CLIPSEG_SAVE_SCREENSHOT=1 pytest ...
        SCREENSHOT.write_bytes((tmp_path / "page.png").read_bytes())
