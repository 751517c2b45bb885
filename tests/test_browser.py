"""The page in a real browser: Debian's Chromium driven by Playwright.

`make test` installs Chromium (apt-get) when /usr/bin/chromium is missing;
Playwright's own browser download cannot work here. The screenshot is kept
as a test artifact under artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_jax.demo.measure import CHROMIUM, CHROMIUM_ARGS

from .helpers import T, make_tiny_model, serving, tiny_models

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make test` installs it (apt-get install chromium)"
)

# Records every value the step counter shows, once per animation frame.
WATCH_STEP = """() => {
  window.seenSteps = [];
  const watch = () => {
    const v = document.querySelector('#step input').value;
    if (window.seenSteps.at(-1) !== v) window.seenSteps.push(v);
    requestAnimationFrame(watch);
  };
  watch();
}"""


def step_is(value):
    return f"document.querySelector('#step input')?.value === '{value}'"


def test_page_denoises_live(tmp_path):
    path = make_tiny_model(tmp_path / "tiny.safetensors")
    with serving(tiny_models(path), min_interval=0.0) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_function(step_is(T), timeout=60_000)  # the page load resets
            image = page.locator("#xt img")
            first = image.get_attribute("src")
            assert first.endswith(".png")

            page.evaluate(WATCH_STEP)
            page.locator("#steps input").fill("30")
            page.click("#denoise")
            page.wait_for_function(step_is(T - 30), timeout=60_000)
            page.wait_for_function(f"document.querySelector('#xt img').src !== '{first}'")
            seen = page.evaluate("window.seenSteps")
            assert seen[0] == str(T) and seen[-1] == str(T - 30)
            assert len(seen) >= 3, seen  # at least one intermediate step shown live
            assert "denoised 30 steps" in page.locator("#status").inner_text()
            assert "30 / 30 steps" in page.locator("#bar").inner_text()  # the progress bar

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "demo-browser.png", full_page=True)

            # a bad request: a message on the page, the step unchanged
            page.locator("#steps input").fill("0")
            page.click("#denoise")
            page.wait_for_function("document.querySelector('#status').innerText.includes('between 1 and')")
            assert page.locator("#step input").input_value() == str(T - 30)
        finally:
            browser.close()
