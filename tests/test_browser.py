"""The page in a real browser: Debian's Chromium driven by Playwright.

`make test` installs Chromium (apt-get) when /usr/bin/chromium is missing;
Playwright's own browser download cannot work here. The screenshot is kept
as a test artifact under artifacts/.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.demo import render
from ddpm_jax.demo.measure import CHROMIUM, CHROMIUM_ARGS
from ddpm_jax.demo.models import PAGE_CHAIN_STEPS

from .helpers import serving

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make test` installs it (apt-get install chromium)"
)

# Records every value the step counter shows, once per animation frame, and every
# status line the page renders (a MutationObserver sees each DOM update, even two
# within one frame, which a fast chain on an already compiled model produces).
WATCH_STEP = """() => {
  window.seenSteps = [];
  window.seenStatus = [];
  const watch = () => {
    const v = document.querySelector('#step input').value;
    if (window.seenSteps.at(-1) !== v) window.seenSteps.push(v);
    requestAnimationFrame(watch);
  };
  watch();
  const status = document.querySelector('#status');
  new MutationObserver(() => window.seenStatus.push(status.innerText))
    .observe(status, {childList: true, subtree: true, characterData: true});
}"""


def step_is(value):
    return f"document.querySelector('#step input')?.value === '{value}'"


@contextlib.contextmanager
def served_page(demo_models, height):
    """The demo served on 127.0.0.1 and open in Chromium, after the page load's Reset (onto the
    page's first chain: DPM-Solver++ over PAGE_CHAIN_STEPS steps)."""
    with serving(demo_models, min_interval=0.0) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.goto(url)
            page.wait_for_function(step_is(PAGE_CHAIN_STEPS), timeout=60_000)  # the page load resets
            yield page
        finally:
            browser.close()


def test_page_denoises_live(demo_models):
    """A first visitor's first click, on the page's defaults, ends on a picture (step 0), live."""
    S = PAGE_CHAIN_STEPS
    with served_page(demo_models, 900) as page:
        image = page.locator("#xt img")
        first = image.get_attribute("src")
        assert first.endswith(".png")

        page.evaluate(WATCH_STEP)
        page.click("#denoise")
        page.wait_for_function(step_is(0), timeout=60_000)
        page.wait_for_function(f"document.querySelector('#xt img').src !== '{first}'")
        seen = page.evaluate("window.seenSteps")
        assert seen[0] == str(S) and seen[-1] == "0"
        live = [st for st in page.evaluate("window.seenStatus") if st.startswith("denoising: step")]
        assert live, page.evaluate("window.seenStatus")  # intermediate steps reached the page while it ran
        assert f"denoised {S} steps" in page.locator("#status").inner_text()
        assert f"{S} / {S} steps" in page.locator("#bar").inner_text()  # the progress bar

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "demo-browser.png", full_page=True)

        # a bad request: a message on the page, the step unchanged
        page.locator("#steps input").fill("0")
        page.click("#denoise")
        page.wait_for_function("document.querySelector('#status').innerText.includes('between 1 and')")
        assert page.locator("#step input").input_value() == "0"


@pytest.mark.slow
def test_page_inpaints_a_painted_stroke(demo_models):
    """Sample 0 into the editor, a stroke down the middle, Inpaint: the middle changes, the sides stay."""
    with served_page(demo_models, 1400) as page:
        page.click("#denoise")  # the page's whole first chain
        page.wait_for_function(step_is(0), timeout=60_000)
        before = shown_tile(page)

        page.get_by_text("Inpaint (RePaint) and interpolate").click()
        page.click("#to_editor")
        page.wait_for_function("document.querySelector('#status').innerText.includes('in the editor')")
        page.locator("#editor button[aria-label='Brush']").click()
        box = page.locator("#editor canvas").first.bounding_box()
        # The picture sits in the middle of the canvas: a stroke that starts outside it paints nothing.
        x, top, bottom = box["x"] + box["width"] / 2, box["y"] + 0.2 * box["height"], box["y"] + 0.8 * box["height"]
        page.mouse.move(x, top)
        page.mouse.down()
        for i in range(1, 21):
            page.mouse.move(x, top + (bottom - top) * i / 20, steps=3)
            page.wait_for_timeout(20)
        page.mouse.up()
        page.get_by_text("RePaint's schedule").click()
        for field, value in (("#rp_steps", 10), ("#rp_jump", 3), ("#rp_resample", 2)):
            page.locator(f"{field} input").fill(str(value))
        page.click("#inpaint")
        page.wait_for_function("document.querySelector('#status').innerText.includes('inpainted')", timeout=60_000)
        after = shown_tile(page)
        changed = np.flatnonzero((after != before).any(axis=0))
        assert len(changed) and changed.min() >= 2 and changed.max() <= 5, changed  # the stroke's columns
        np.testing.assert_array_equal(after[:, :2], before[:, :2])
        np.testing.assert_array_equal(after[:, 6:], before[:, 6:])
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "demo-inpaint.png", full_page=True)


def shown_tile(page) -> np.ndarray:
    """The main image as the page shows it, back at the model's 8x8 (it shows one sample)."""
    src = page.locator("#xt img").get_attribute("src")
    data = page.request.get(src).body()
    img = np.asarray(Image.open(io.BytesIO(data)))
    return img[:: render.display_scale(8), :: render.display_scale(8)]
