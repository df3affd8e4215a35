"""A real browser on the page for the browser tests: Debian's Chromium as Playwright drives it, and a page filled
in as a person does (upload, type, leave the field). The `browser` fixture is in conftest.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers import IMAGE, needs_shared

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Screenshots of each page test, to look at after a run; outside the checkout.
ARTIFACTS = Path(os.environ.get("FRAMEPACK_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "framepack-test-artifacts"))
VIDEO_PLAYING = """() => {
    const video = document.querySelector('#fp-video video');
    return video !== null && !video.paused && video.readyState >= 2 && video.currentTime > 0;
}"""
VIDEO_SHOWN = "() => document.querySelector('#fp-video video') !== null"

# What every browser test needs: the fixtures, Chromium; they are slow.
BROWSER_TESTS = [
    needs_shared,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


def open_page(browser, url: str, seconds: float, steps: int = 3, prompt: str = "The girl dances gracefully."):
    """Open the page, upload the start image, type the prompt and choose a small job; returns the page."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(url)
    page.locator("#fp-image input[type=file]").set_input_files(str(IMAGE))
    expect(page.locator("#fp-image img")).to_be_visible()  # the upload has finished
    page.locator("#fp-prompt textarea").fill(prompt)
    set_number(page, "fp-length", seconds)
    set_number(page, "fp-resolution", 128)
    set_number(page, "fp-steps", steps)
    return page


def set_number(page, elem_id: str, value: float) -> None:
    """Type a number and leave the field, as a person does. A slider in an accordion that has just opened may
    still be mounting and put its initial value back a moment later, so the value is checked after a pause
    and typed again if it did not stay."""
    number = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(3):
        number.fill(str(value))
        number.press("Tab")
        page.wait_for_timeout(300)
        if float(number.input_value()) == float(value):
            return
    raise AssertionError(f"{elem_id} does not keep the value {value}")


def start_job(browser, url: str, seconds: float, steps: int = 3):
    """Open the page with a small job and press Start; returns the page."""
    page = open_page(browser, url, seconds, steps)
    page.locator("#fp-start").click()
    return page


def open_extend_tab(browser, url: str, clip: Path):
    """Open the page's Extend tab with `clip` uploaded; returns the page."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(url)
    page.get_by_role("tab", name="Extend a video").click()
    page.locator("#fp-extend-video input[type=file]").set_input_files(str(clip))
    expect(page.locator("#fp-extend-video video")).to_be_visible()  # the upload has finished
    return page


def add_end_frame_and_keyframe(page, controls: Path, seconds: float = 0.8) -> None:
    """Open "End frame and keyframes" and give the controls cases' end image and one keyframe at `seconds`."""
    from playwright.sync_api import expect

    page.get_by_text("End frame and keyframes").click()
    page.locator("#fp-end-image input[type=file]").set_input_files(str(controls / "c1_original_end" / "end.png"))
    expect(page.locator("#fp-end-image img")).to_be_visible()
    page.locator("#fp-keyframes input[type=file]").set_input_files(str(controls / "c2_original_timed" / "keyframe_0.png"))
    page.locator("#fp-keyframe-times textarea").fill(f"{seconds:g}")
    page.locator("#fp-keyframe-times textarea").press("Enter")
