"""The page of ``clipseg serve`` and its /docs in a real headless Chromium (Debian's ``chromium``, driven by
Playwright), judged by what they must show: the colours of a layer where its mask is, gone when it is
toggled off, a dark page in the dark scheme, an error in place of the result; never pixel for pixel.

CI installs chromium (.ci/run); elsewhere the tests are skipped when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from helpers import noise, save, subprocess_env
from helpers_serve import free_port

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "serve.png"
PROMPTS = ("cat", "dog")
# Watches what the page sends (Chromium hides multipart bodies from Playwright): the form's text fields per request.
WATCH_FORMS = """window.sentForms = [];
const fetchOfThePage = window.fetch;
window.fetch = (address, options = {}) => {
  if (options.body instanceof FormData) {
    window.sentForms.push([...options.body.entries()].filter(([, value]) => typeof value === "string"));
  }
  return fetchOfThePage(address, options);
};"""
httpx = pytest.importorskip("httpx", reason="the dev extra's httpx polls the server")
sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra's playwright drives the browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")]


@pytest.fixture(scope="module")
def url(checkpoint: Path) -> str:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "serve", "--weights", str(checkpoint),
                                "--precision", "fp32", "--port", str(port)], env=subprocess_env())
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
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


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    """A fresh page at ``/``; the test fails if the page logs an error or throws (HTTP errors it asked for aside)."""
    context = browser.new_context(accept_downloads=True, color_scheme="light", viewport={"width": 1100, "height": 900})
    context.add_init_script(WATCH_FORMS)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" and not asked_for(message) else None)
    page.goto(url + "/")
    yield page
    context.close()
    assert not problems, problems


def asked_for(message) -> bool:
    """Chromium logs every 4xx answer; those of /v1/segment are the errors a test provoked."""
    return message.text.startswith("Failed to load resource") and message.location["url"].endswith("/v1/segment")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """320x240 in blocks of 16x16 pixels: a spot inside a block looks the same one screen pixel away."""
    blocks = noise((20, 15), seed=3).resize((320, 240), Image.Resampling.NEAREST)
    return save(blocks, tmp_path_factory.mktemp("photo") / "photo.png")


@pytest.fixture(scope="module")
def maps(url, photo) -> list[np.ndarray]:
    """The soft maps (8-bit) the page gets for PROMPTS, asked of the API directly."""
    answer = httpx.post(f"{url}/v1/segment", files={"image": ("photo.png", photo.read_bytes())},
                        data={"prompt": list(PROMPTS), "soft": "true"}, headers={"Accept": "application/json"},
                        timeout=120)
    assert answer.status_code == 200, answer.text
    grey = [np.asarray(Image.open(BytesIO(base64.b64decode(record["mask"])))) for record in answer.json()["masks"]]
    assert not np.array_equal(grey[0], grey[1]), "the fixture cannot tell the layers apart"
    return grey


def palette() -> list[tuple[int, int, int]]:
    from clipseg_cli.imaging.writing import PALETTE

    return [tuple(color) for color in PALETTE]


def segment(page, photo: Path, prompts: str = ", ".join(PROMPTS), union: bool = False) -> None:
    page.set_input_files("#image", str(photo))
    page.get_by_label("What to cut out").fill(prompts)
    page.get_by_label("Merge all prompts").set_checked(union)
    page.get_by_role("button", name="Segment").click()
    page.wait_for_selector("#view[data-state=ready], #error:not([hidden])")
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()


def sent(page) -> list[list[list[str]]]:
    """The text fields of every form the page sent, in order."""
    return page.evaluate("window.sentForms")


def shown(page) -> np.ndarray:
    """The canvas as the screen shows it (RGB), one screen pixel per image pixel at this size."""
    return np.asarray(Image.open(BytesIO(page.locator("#view").screenshot())).convert("RGB")).astype(int)


def test_before_a_photo_there_is_only_the_form_and_nothing_throws(page):
    assert page.locator("#result").is_hidden()
    assert page.locator("#view").is_hidden()
    assert page.locator("input[type=range]:visible").count() == 0
    assert page.locator("button:visible").all_text_contents() == ["Segment"]
    for control in page.locator("button:visible, input[type=checkbox]:visible, input[type=radio]:visible").all():
        control.click()
    assert "Pick a photo first" in page.locator("#error").text_content()  # said in the page, not thrown
    page.locator("#image").focus()
    page.keyboard.press("Escape")


def test_each_prompt_is_a_layer_in_the_cli_palette_with_its_toggle(page, photo, maps):
    segment(page, photo)
    assert sent(page) == [[["prompt", "cat"], ["prompt", "dog"], ["union", "false"], ["soft", "true"],
                           ["threshold", "0.4"]]]  # no union unless asked
    rows = page.locator("#layers li")
    assert rows.count() == 2 and page.locator("#merged").is_hidden()
    swatches = page.locator("#layers .swatch").evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert swatches == [f"rgb({r}, {g}, {b})" for r, g, b in palette()[:2]]

    # each layer its own threshold: the first cut at its median (half of it inside), the second at 1; a spot
    # deep inside the first layer only
    cuts = [round(float(np.median(maps[0])) / 255, 2), 1.0]
    for prompt, cut in zip(PROMPTS, cuts, strict=True):
        page.get_by_label(f"Threshold for {prompt}").fill(str(cut))
    masks = [grey >= round(cut * 255) for grey, cut in zip(maps, cuts, strict=True)]
    only_first = ndimage.binary_erosion(masks[0], iterations=3) & ~ndimage.binary_dilation(masks[1], iterations=3)
    pixels = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    flat = (ndimage.maximum_filter(pixels, size=(5, 5, 1)) == ndimage.minimum_filter(pixels, size=(5, 5, 1))).all(2)
    assert (only_first & flat).any(), "no spot where the first layer alone is"
    y, x = np.argwhere(only_first & flat)[0]
    original = pixels[y, x]
    tinted = (original + np.array(palette()[0])) / 2
    screen = shown(page)
    assert screen.shape[:2] in ((240, 320), (241, 320), (240, 321), (241, 321))  # the canvas, at 1:1
    assert np.abs(screen[y, x] - tinted).max() <= 3, (screen[y, x], tinted)

    page.get_by_label(PROMPTS[0], exact=True).uncheck()  # the toggle: its colour goes, the photo shows
    page.wait_for_function("!document.getElementById('view').getAttribute('aria-label').includes('cat')")
    assert np.abs(shown(page)[y, x] - original).max() <= 3
    page.get_by_label(PROMPTS[0], exact=True).focus()
    page.keyboard.press("Space")  # keyboard operable
    page.wait_for_function("document.getElementById('view').getAttribute('aria-label').includes('cat')")
    assert np.abs(shown(page)[y, x] - tinted).max() <= 3

    page.get_by_label("Masks").check()  # the masks view: each layer opaque in its colour
    page.wait_for_selector("#view[data-view=mask]")
    assert np.abs(shown(page)[y, x] - palette()[0]).max() <= 3
    assert len(sent(page)) == 1  # thresholds, toggles and views: all in the browser, no new request


def test_union_only_when_asked_and_the_page_says_so(page, photo):
    segment(page, photo, union=True)
    assert ["union", "true"] in sent(page)[0]
    assert page.locator("#layers li").count() == 1
    assert "merged into one mask" in page.locator("#merged").text_content()


def test_downloads_per_layer_are_the_layer_cut_at_its_threshold(page, photo, maps):
    segment(page, photo)
    page.get_by_label(f"Threshold for {PROMPTS[1]}").fill("0.5")
    with page.expect_download() as download:
        page.get_by_role("button", name=f"Download the mask of {PROMPTS[1]} (PNG)").click()
    assert download.value.suggested_filename == f"photo.{PROMPTS[1]}.mask.png"
    mask = np.asarray(Image.open(download.value.path()).convert("L"))
    assert np.array_equal(mask == 255, maps[1] >= round(0.5 * 255))
    with page.expect_download() as download:
        page.get_by_role("button", name=f"Download the cut-out of {PROMPTS[0]} (PNG)").click()
    cutout = Image.open(download.value.path())
    assert (cutout.mode, cutout.size) == ("RGBA", (320, 240))
    assert np.array_equal(np.asarray(cutout)[..., 3] == 255, maps[0] >= round(0.4 * 255))


def test_a_spinner_with_the_time_while_the_request_runs(page, photo):
    held = []
    page.route("**/v1/segment", lambda route: held.append(route))  # the request waits here till the test lets go
    page.set_input_files("#image", str(photo))
    page.get_by_label("What to cut out").fill("cat, dog")
    page.get_by_role("button", name="Segment").click()
    page.wait_for_selector("#spinner:visible")
    assert "Segmenting 2 prompts" in page.locator("#status-text").text_content()
    assert page.get_by_role("button", name="Segment").is_disabled()
    page.wait_for_function("parseFloat(document.getElementById('elapsed').textContent) >= 0.3")  # the clock runs
    while not held:  # the route handler runs inside Playwright calls
        page.wait_for_timeout(20)
    held[0].continue_()
    page.wait_for_selector("#view[data-state=ready]")
    assert page.locator("#spinner").is_hidden()
    assert "2 layers in" in page.locator("#status-text").text_content()


def test_cancel_and_escape_stop_the_request_and_keep_the_result(page, photo):
    segment(page, photo, prompts="cat")
    held = []
    page.route("**/v1/segment", lambda route: held.append(route))  # never answered: only a cancel ends it
    for stop in ("button", "Escape"):
        page.get_by_label("What to cut out").fill("cat, dog")
        page.get_by_role("button", name="Segment").click()
        page.wait_for_selector("#spinner:visible")
        if stop == "button":
            page.get_by_role("button", name="Cancel").click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_selector("#spinner", state="hidden")
        assert page.locator("#status-text").text_content() == "Cancelled."
        assert page.get_by_role("button", name="Segment").is_enabled()
        assert page.locator("#cancel").is_hidden()
        assert page.locator("#layers li").count() == 1 and page.locator("#error").is_hidden()  # the last result


def test_an_error_replaces_the_result(page, photo, tmp_path):
    segment(page, photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    page.set_input_files("#image", str(broken))
    page.get_by_role("button", name="Segment").click()
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image clipseg can read" in page.locator("#error").text_content()
    assert page.locator("#result").is_hidden() and page.locator("#view").is_hidden()
    assert page.locator("#layers li").count() == 0
    screen = np.asarray(Image.open(BytesIO(page.screenshot(full_page=True))).convert("RGB")).reshape(-1, 3)
    assert not any((np.abs(screen - color).max(axis=1) <= 2).sum() > 500 for color in palette()[:2])


def test_paste_and_drop_anywhere_choose_the_photo(page, photo):
    data = base64.b64encode(photo.read_bytes()).decode()
    make = f"""name => {{
        const bytes = Uint8Array.from(atob("{data}"), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {{type: "image/png"}}));
        return transfer;
    }}"""
    pasted = page.evaluate_handle(make, "pasted.png")
    page.evaluate("transfer => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer, "
                  "bubbles: true}))", pasted)
    assert "pasted.png" in page.locator("#photo-name").text_content()
    dropped = page.evaluate_handle(make, "dropped.png")
    page.dispatch_event("h1", "dragenter", {"dataTransfer": dropped})
    assert page.locator("#dropping").is_visible()
    page.dispatch_event("h1", "drop", {"dataTransfer": dropped})  # on the title: anywhere on the page
    assert page.locator("#dropping").is_hidden()
    assert "dropped.png" in page.locator("#photo-name").text_content()
    assert page.evaluate("document.getElementById('image').files[0].name") == "dropped.png"
    page.get_by_label("What to cut out").fill("cat")
    page.get_by_label("What to cut out").press("Enter")  # the keyboard submits
    page.wait_for_selector("#view[data-state=ready]")
    assert page.get_by_role("button", name="Download the mask of cat (PNG)").is_visible()


def test_screen_reader_names_and_both_colour_schemes(page, photo, tmp_path):
    segment(page, photo)
    tree = page.locator("main").aria_snapshot()
    for name in ('checkbox "cat"', 'slider "Threshold for cat"', 'button "Download the mask of dog (PNG)"',
                 'textbox "What to cut out"', 'img "The photo with cat'):
        assert name in tree, tree
    page.screenshot(path=str(tmp_path / "light.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(tmp_path / "dark.png"), full_page=True)
    for scheme, light in (("light", True), ("dark", False)):
        corner = np.asarray(Image.open(tmp_path / f"{scheme}.png").convert("L"))[5, 5]
        assert (corner > 200) if light else (corner < 50), (scheme, corner)
    if os.environ.get("CLIPSEG_SAVE_SCREENSHOT"):  # the docs' picture: CLIPSEG_SAVE_SCREENSHOT=1 pytest ...
        SCREENSHOT.write_bytes((tmp_path / "light.png").read_bytes())


def test_docs_render_the_operations_with_no_request_leaving_the_machine(browser, url):
    context = browser.new_context()
    page = context.new_page()
    outside = []

    def local_only(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock-summary-path")
    assert "/v1/segment" in page.locator(".opblock-summary-path").all_text_contents()
    assert outside == []
    context.close()
