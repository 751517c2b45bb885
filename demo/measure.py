"""Measure the demo as a user meets it: `python -m ddpm_jax.demo.measure`.

Starts `ddpm-jax demo` twice on 127.0.0.1 with one fresh compilation cache
(cold, then warm) and reports the time from launch to the first image (the
page's x_T) and to the first denoised image, what a visitor then waits for on
a new page's chain (the first picture, switching to each further model, the
first Denoise at a new batch size), the page's update rate during a full
denoise, and the server's resident memory with each model loaded.

`--random PRESET` stands in a randomly initialised model at a preset's size
(e.g. cifar10, whose weights cannot be fetched offline): the same compute and
memory, noise for pictures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def random_model(preset: str, folder: Path) -> str:
    import jax

    from ddpm_jax import DIFFUSION_PRESETS, UNET_PRESETS, Diffusion
    from ddpm_jax.unet import init_params

    path = folder / f"random_{preset}.safetensors"
    ucfg = UNET_PRESETS[preset]
    Diffusion(
        diffusion_config=DIFFUSION_PRESETS[preset], unet_config=ucfg, params=init_params(ucfg, jax.random.key(0))
    ).save_pretrained(path)
    return str(path)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def connect(url: str, proc, timeout: float):
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited with {proc.returncode}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def launch_once(models: list[str], port: int, cache: Path, log_path: Path) -> dict:
    """Launch, then time the first x_T and the first 10 denoised steps."""
    cmd = [sys.executable, "-m", "ddpm_jax.cli", "demo", "--port", str(port), "--cache-dir", str(cache)]
    for m in models:
        cmd += ["--model", m]
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = connect(f"http://127.0.0.1:{port}/", proc, timeout=600)
        t_up = time.monotonic() - t0
        first = client.predict(models[0], False, 0, 1, api_name="/reset")
        t_first = time.monotonic() - t0
        assert Image.open(first[0]).size[0] > 0, first
        client.predict(10, False, True, api_name="/denoise")
        t_denoise = time.monotonic() - t0
        result = dict(
            listening_s=round(t_up, 2),
            first_image_s=round(t_first, 2),
            first_denoise_s=round(t_denoise, 2),
            rss_mib={models[0]: round(rss_mib(proc.pid))},
        )
        return result, client, proc
    except BaseException:
        proc.terminate()
        raise


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright cannot download its own here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Records (ms, step) whenever the page's image changes, once per animation frame.
WATCH_IMAGE = """() => {
  window.changes = [];
  let src = null;
  const watch = () => {
    const img = document.querySelector('#xt img');
    if (img && img.src !== src) {
      src = img.src;
      window.changes.push([performance.now(), document.querySelector('#step input').value]);
    }
    requestAnimationFrame(watch);
  };
  watch();
}"""


def page_update_rate(url: str, steps: int) -> dict:
    """Image changes per second seen in Chromium while the page denoises `steps` steps of DDPM."""
    from playwright.sync_api import sync_playwright

    from ddpm_jax.demo.models import PAGE_CHAIN_STEPS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_function(
                f"document.querySelector('#step input')?.value === '{PAGE_CHAIN_STEPS}'", timeout=120_000
            )
            # The page opens on a short chain; Reset onto the API's default, DDPM over all T.
            page.locator("#sampler input").click()
            page.get_by_role("option", name="ddpm", exact=True).click()
            page.locator("#chain_steps input").fill("0")
            page.get_by_role("button", name="Reset (fresh x_T)").click()
            page.wait_for_function(
                f"document.querySelector('#step input')?.value !== '{PAGE_CHAIN_STEPS}'", timeout=120_000
            )
            start = page.locator("#step input").input_value()
            page.locator("#steps input").fill(str(steps))
            page.evaluate(WATCH_IMAGE)
            page.click("#denoise")
            end = str(int(start) - steps)
            page.wait_for_function(f"document.querySelector('#step input').value === '{end}'", timeout=600_000)
            page.wait_for_timeout(300)
            changes = page.evaluate("window.changes")[1:]  # the first is the x_T already shown
        finally:
            browser.close()
    times = [t for t, _ in changes]
    span = (times[-1] - times[0]) / 1000
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    return dict(
        steps=steps,
        image_updates=len(changes),
        span_s=round(span, 2),
        updates_per_s=round((len(changes) - 1) / span, 1) if span else None,
        median_gap_ms=round(gaps[len(gaps) // 2]) if gaps else None,
        steps_seen=[s for _, s in changes][:5] + ["..."],
    )


def visitor_waits(client, models: list[str], batch: int) -> dict:
    """Seconds a visitor waits on a new page's chain (`PAGE_SAMPLER` over `PAGE_CHAIN_STEPS`, one
    click to a picture): each model's Reset (the first load of a further model: a switch) and
    Denoise at batch size 1, then a Reset and Denoise on the last model at `batch`."""
    from ddpm_jax.demo.models import PAGE_CHAIN_STEPS, PAGE_SAMPLER

    waits = {}
    for name, model, n in [*((m, m, 1) for m in models), (f"batch {batch}", models[-1], batch)]:
        label = Path(name).stem
        t0 = time.monotonic()
        client.predict(model, False, 0, n, PAGE_SAMPLER, PAGE_CHAIN_STEPS, api_name="/reset")
        t1 = time.monotonic()
        client.predict(PAGE_CHAIN_STEPS, False, True, api_name="/denoise")
        t2 = time.monotonic()
        waits[label] = dict(reset_s=round(t1 - t0, 2), denoise_s=round(t2 - t1, 2))
    return waits


def update_rate(client, model: str, steps: int) -> dict:
    """Views a gradio_client receives per second while `model` denoises `steps` steps."""
    client.predict(model, False, 0, 1, api_name="/reset")
    t0 = time.monotonic()
    job = client.submit(steps, False, True, api_name="/denoise")
    arrivals = [time.monotonic() - t0 for _ in job]
    total = arrivals[-1]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return dict(
        steps=steps,
        chain_s=round(total, 2),
        updates=len(arrivals),
        updates_per_s=round(len(arrivals) / total, 1),
        steps_per_s=round(steps / total),
        median_gap_ms=round(1000 * sorted(gaps)[len(gaps) // 2]) if gaps else None,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="names or paths; the first is timed")
    p.add_argument(
        "--random",
        action="append",
        default=[],
        metavar="PRESET",
        help="add a randomly initialised model at this preset (e.g. digits, cifar10)",
    )
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--steps", type=int, default=1000, help="steps of the timed denoise")
    p.add_argument("--batch", type=int, default=4, help="the new batch size a visitor then picks")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ddpm_jax_measure_"))
    models = list(args.model or []) + [random_model(preset, work) for preset in args.random]
    if not models:
        p.error("give --model and/or --random")
    report = {"models": models}
    cache = work / "jax_cache"
    for run in ("cold", "warm"):
        result, client, proc = launch_once(models, args.port, cache, work / f"{run}.log")
        try:
            report[run] = result
            result["visitor_waits"] = visitor_waits(client, models, args.batch)
            if run == "warm":
                report["api_update_rate"] = update_rate(client, models[0], args.steps)
                if CHROMIUM.exists():
                    url = f"http://127.0.0.1:{args.port}/"
                    report["page_update_rate"] = page_update_rate(url, args.steps)
                for m in models[1:]:
                    client.predict(m, False, 0, 1, api_name="/reset")
                    client.predict(10, False, True, api_name="/denoise")
                    result["rss_mib"]["+" + m] = round(rss_mib(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
