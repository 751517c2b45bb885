"""The demo page: its API through gradio_client against the app served on
127.0.0.1, its handlers directly (Stop, throttling), and its pure helpers."""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import Diffusion
from ddpm_jax.demo import render
from ddpm_jax.demo.handlers import Demo
from ddpm_jax.demo.models import Models, ModelUnavailable
from ddpm_jax.demo.state import Session, Trajectory, parse_int
from ddpm_jax.weights import save_weights

from .helpers import CHUNK, ONE_LEVEL_UNET, T, demo_client, make_tiny_model, serving, tiny_models

gradio_client = pytest.importorskip("gradio_client")

SCALE = render.display_scale(ONE_LEVEL_UNET.resolution)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("demo") / "tiny.safetensors")


@pytest.fixture(scope="module")
def url(model_path):
    with serving(tiny_models(model_path)) as url:
        yield url


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def check_view(out, step):
    """A view (image, step, status, plot): a PNG of the model's shape, upscaled."""
    image, got_step, status, plot = out[:4]
    assert got_step == step, status
    assert image.endswith(".png") and plot.endswith(".png")
    pic = Image.open(image)
    assert pic.mode == "L"  # one channel, like the model
    assert pic.size == (ONE_LEVEL_UNET.resolution * SCALE,) * 2
    # nearest-neighbour upscaling: each model pixel is a SCALE x SCALE block
    arr = np.asarray(pic)
    assert (arr == np.repeat(np.repeat(arr[::SCALE, ::SCALE], SCALE, 0), SCALE, 1)).all()
    return status


# -- through gradio_client ------------------------------------------------------


def test_reset_denoise_diffuse(url):
    c = demo_client(url)
    check_view(c.predict("tiny", False, 3, 1, api_name="/reset"), T)
    out = c.predict(7, False, True, api_name="/denoise")
    assert "7 steps" in check_view(out, T - 7) and "7 / 7 steps" in out[4]  # the progress bar
    check_view(c.predict(12, True, True, api_name="/denoise"), T - 19)
    check_view(c.predict(5, False, api_name="/diffuse"), T - 14)
    png = Image.open(c.predict(False, api_name="/save_image"))
    assert png.size == (ONE_LEVEL_UNET.resolution,) * 2  # downloads are at model resolution


def test_same_seed_same_chain_whatever_the_split(url):
    a, b = demo_client(url), demo_client(url)
    a.predict("tiny", False, 5, 1, api_name="/reset")
    b.predict("tiny", False, 5, 1, api_name="/reset")
    one = a.predict(T, False, True, api_name="/denoise")
    b.predict(13, False, True, api_name="/denoise")
    two = b.predict(T - 13, False, True, api_name="/denoise")
    assert one[1] == two[1] == 0
    np.testing.assert_array_equal(pixels(one[0]), pixels(two[0]))


BAD = [
    # (endpoint, args, message fragment) from a state at step T - 10
    ("/denoise", (0, False, True), "between 1 and 40"),
    ("/denoise", (T + 1, False, True), "between 1 and 40"),
    ("/denoise", ("ten", False, True), "whole number"),
    ("/denoise", (2.5, False, True), "whole number"),
    ("/denoise", (T - 5, False, True), "more than the 30 steps left"),
    ("/diffuse", (11, False), "more than the 10 steps left"),
    ("/diffuse", (-3, False), "between 1 and 40"),
    ("/reset", ("tiny", False, "x", 1), "seed must be a whole number"),
]


def test_bad_input_gives_a_message_and_keeps_the_state(url):
    c = demo_client(url)
    c.predict("tiny", False, 1, 1, api_name="/reset")
    before = c.predict(10, False, True, api_name="/denoise")
    for endpoint, args, fragment in BAD:
        out = c.predict(*args, api_name=endpoint)
        assert out[2].startswith("⚠️") and fragment in out[2], (endpoint, args, out[2])
        assert out[1] == T - 10, (endpoint, args)
        np.testing.assert_array_equal(pixels(out[0]), pixels(before[0]))
    # the batch slider's bounds are checked by the handler too: the page's message, state unchanged
    out = c.predict("tiny", False, 1, 17, api_name="/reset")
    assert "batch size must be between 1 and 16, got 17" in out[2]
    assert c.predict(False, api_name="/view")[1] == T - 10
    # the state really is unchanged: the next valid step continues from it
    check_view(c.predict(1, False, True, api_name="/denoise"), T - 11)


def test_denoise_at_zero_and_diffuse_at_T_are_refused(url):
    c = demo_client(url)
    c.predict("tiny", False, 2, 1, api_name="/reset")
    out = c.predict(1, False, api_name="/diffuse")
    assert "nothing to diffuse at step T=40" in out[2] and out[1] == T
    c.predict(T, False, True, api_name="/denoise")
    out = c.predict(1, False, True, api_name="/denoise")
    assert "nothing to denoise at step 0" in out[2] and out[1] == 0
    out = c.predict(2, True, api_name="/branch")
    assert "already clean" in out[1]


def test_unavailable_model_leaves_the_page_usable(url):
    c = demo_client(url)
    c.predict("tiny", False, 4, 1, api_name="/reset")
    c.predict(3, False, True, api_name="/denoise")
    for ema in (False, True):
        out = c.predict("broken", ema, 4, 1, api_name="/reset")
        assert out[2].startswith("⚠️ could not load broken") and "still on tiny" in out[2]
        assert out[1] == T - 3 and out[4:6] == ("tiny", False)  # dropdown reverted
    out = c.predict("broken", False, 4, 1, api_name="/reset")
    assert "next try in" in out[2]  # a failed fetch is not retried at once
    check_view(c.predict(3, False, True, api_name="/denoise"), T - 6)


def test_two_clients_at_once_keep_their_own_state(url):
    a, b = demo_client(url), demo_client(url)
    a.predict("tiny", False, 1, 1, api_name="/reset")
    b.predict("tiny", False, 2, 2, api_name="/reset")
    jobs = [a.submit(T - 10, False, True, api_name="/denoise"), b.submit(25, False, True, api_name="/denoise")]
    out_a, out_b = (j.result(timeout=120) for j in jobs)
    assert (out_a[1], out_b[1]) == (10, T - 25)
    check_view(out_a, 10)
    # b's batch of 2 is a grid: two 8x8 tiles with a 2 px border, upscaled
    assert Image.open(out_b[0]).size == ((2 * (8 + 2) + 2) * SCALE, (8 + 2 + 2) * SCALE)
    assert a.predict(2, False, api_name="/diffuse")[1] == 12
    assert b.predict(False, api_name="/view")[1] == T - 25


def test_upload_diffuse_and_denoise_back(url, tmp_path):
    c = demo_client(url)
    c.predict("tiny", False, 0, 1, api_name="/reset")
    pic = np.zeros((32, 48, 3), np.uint8)
    pic[:, 8:24] = 255  # a white square after the center crop to 32x32
    Image.fromarray(pic).save(tmp_path / "up.png")
    out = c.predict(gradio_client.handle_file(str(tmp_path / "up.png")), False, api_name="/use_image")
    check_view(out, 0)
    got = pixels(out[0])[::SCALE, ::SCALE]
    assert got[:, :4].min() > 200 and got[:, 4:].max() < 50
    check_view(c.predict(T, False, api_name="/diffuse"), T)
    check_view(c.predict(T, False, True, api_name="/denoise"), 0)
    gif = Image.open(c.predict(api_name="/save_gif"))
    assert gif.format == "GIF" and gif.n_frames >= 3  # x_0, then frames of both chains


def test_branch_shows_x_t_and_k_continuations(url):
    c = demo_client(url)
    c.predict("tiny", False, 0, 1, api_name="/reset")
    c.predict(20, False, True, api_name="/denoise")
    img, status, bar = c.predict(3, True, api_name="/branch")
    assert "3 continuations" in status and "20 / 20 steps" in bar
    row = pixels(img)[::SCALE, ::SCALE]
    assert row.shape == (8 + 4, 4 * (8 + 2) + 2)
    tiles = [row[2:10, 2 + i * 10 : 10 + i * 10] for i in range(4)]
    assert all(not np.array_equal(tiles[i], tiles[j]) for i in range(1, 4) for j in range(i))
    assert c.predict(False, api_name="/view")[1] == T - 20  # the session's x_t is untouched


# -- handlers directly ------------------------------------------------------------


@pytest.fixture(scope="module")
def models(model_path):
    return tiny_models(model_path)


def test_stop_ends_the_chain_within_one_chunk_and_keeps_progress(models):
    demo = Demo(models, "tiny", min_interval=0.0)
    s = Session()
    list(demo.reset(s, "tiny", False, 0, 1))
    chain = demo.denoise(s, 30, False, True)
    first = next(chain)
    assert first.step == T - CHUNK and s.step == T - CHUNK
    out = demo.stop(s, False)
    assert out.step == T - CHUNK and "stopped" in out.status
    rest = list(chain)  # the chain ends at its next chunk without writing, showing the session
    assert [v.step for v in rest] == [T - CHUNK] and s.step == T - CHUNK


def test_a_new_chain_takes_over_from_a_running_one(models):
    demo = Demo(models, "tiny", min_interval=0.0)
    s = Session()
    list(demo.reset(s, "tiny", False, 0, 1))
    old = demo.denoise(s, 30, False, True)
    next(old)
    new = list(demo.diffuse(s, 5, False))
    assert new[-1].step == T - CHUNK + 5
    assert [v.step for v in old] == [T - CHUNK + 5] and s.step == T - CHUNK + 5


def test_updates_are_throttled(models):
    s = Session()
    slow = Demo(models, "tiny", min_interval=60.0)
    list(slow.reset(s, "tiny", False, 0, 1))
    # the first chunk and the last one only
    assert [v.step for v in slow.denoise(s, 30, False, True)] == [T - CHUNK, T - 30]
    fast = Demo(models, "tiny", min_interval=0.0)
    assert [v.step for v in fast.denoise(s, 10, False, True)] == [5, 0]


def test_models_load_once_under_concurrent_sessions(model_path):
    calls = []

    def loader(name, chunk_size):
        calls.append(name)
        return Diffusion.from_pretrained(name, chunk_size=chunk_size)

    models = Models({"tiny": (model_path, model_path)}, loader=loader, warm=False)
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.get("tiny"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [model_path] and len({id(m) for m in got}) == 1
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        models.get("nope")


# -- pure helpers -------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), ("12", 12), (" 7 ", 7), (np.int64(5), 5)])
def test_parse_int_accepts_whole_numbers(value, expected):
    assert parse_int(value, "steps", 1, 40) == expected


@pytest.mark.parametrize("value", [None, "", "abc", 2.5, float("nan"), float("inf"), True, [3], 0, 41])
def test_parse_int_rejects_with_a_message(value):
    with pytest.raises(ValueError, match="steps must be"):
        parse_int(value, "steps", 1, 40)


def test_trajectory_stays_in_budget_and_keeps_both_ends():
    traj = Trajectory(budget_bytes=10 * 64)
    for i in range(100):
        traj.add(np.full((8, 8, 1), i, np.uint8))
    assert sum(f.nbytes for f in traj.frames) <= 10 * 64
    values = [int(f[0, 0, 0]) for f in traj.frames]
    assert values[0] == 0 and values[-1] == 99 and values == sorted(values)


def test_sessions_copy_with_their_own_lock():
    s = Session()
    s.step, s.seed = 7, 3
    c = copy.deepcopy(s)
    assert (c.step, c.seed) == (7, 3) and c.lock is not s.lock and c.trajectory is not s.trajectory


def test_render_helpers():
    x = np.stack([np.full((4, 4, 3), -1.0), np.full((4, 4, 3), 2.0)]).astype(np.float32)
    g = render.grid(x)
    assert g.shape == (4 + 4, 2 * (4 + 2) + 2, 3) and g[2, 2, 0] == 0 and g[2, 8, 0] == 255
    assert render.upscale(g, 3).shape == (24, 42, 3)
    assert render.display_scale(16) == 16 and render.display_scale(256) == 1
    abar = np.linspace(0.99, 0.01, 50)
    assert render.alphas_cumprod_at(abar, 0) == 1.0 and render.alphas_cumprod_at(abar, 50) == 0.01
    plot0, plot50 = render.schedule_plot(abar, 0), render.schedule_plot(abar, 50)
    assert plot0.shape == (170, 360, 3) and not np.array_equal(plot0, plot50)


# -- the command ------------------------------------------------------------------


def test_demo_command_binds_loopback_by_default():
    from ddpm_jax.cli import build_parser

    args = build_parser(["demo"]).parse_args(["demo"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, None)  # None: digits
    args = build_parser(["demo"]).parse_args(["demo", "--model", "a", "--model", "b.safetensors"])
    assert args.model == ["a", "b.safetensors"]


def test_demo_command_bounds_uploads_in_total(capsys):
    from ddpm_jax.cli import build_parser
    from ddpm_jax.demo import cli

    parser = build_parser(["demo"])
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max-client-upload-mb" in help_text and "(default: 100)" in help_text and "(default: 1000)" in help_text
    args = parser.parse_args(["demo"])
    assert (args.max_upload_mb, args.max_client_upload_mb, args.max_total_upload_mb) == (10, 100, 1000)
    args = parser.parse_args(["demo", "--max-client-upload-mb", "5"])  # less than one file
    with pytest.raises(ValueError, match=r"--max-client-upload-mb must be at least --max-upload-mb \(10\)"):
        cli.run(args)


@pytest.mark.slow
def test_demo_command_serves_and_fills_the_compilation_cache(model_path, tmp_path):
    import socket
    import subprocess
    import sys

    from ddpm_jax.demo.measure import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "jax_cache"
    cmd = [
        sys.executable,
        "-m",
        "ddpm_jax.cli",
        "demo",
        "--model",
        model_path,
        "--port",
        str(port),
        "--cache-dir",
        str(cache),
        "--chunk-size",
        str(CHUNK),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = connect(f"http://127.0.0.1:{port}/", proc, timeout=300)
        check_view(c.predict(model_path, False, 0, 1, api_name="/reset"), T)
        check_view(c.predict(9, False, True, api_name="/denoise"), T - 9)
        # the chunk kept as a program (`stored_programs`) and its compiled executable
        assert any(p.name.startswith("denoise_chunk-") for p in (tmp_path / "jax_cache-exported").iterdir())
        assert any(p.name.startswith("jit_call-") for p in cache.iterdir())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_reset_says_loading_before_a_first_load(model_path):
    models = Models({"tiny": (model_path, model_path)}, chunk_size=CHUNK, warm=False)
    outs = list(Demo(models, "tiny").reset(Session(), "tiny", False, 0, 1))
    assert [o.status.split()[0] for o in outs] == ["loading", "tiny:"]
    assert outs[-1].step == T


def test_a_switch_compiles_only_the_chain_it_asks_for(model_path):
    """Reset onto a model not loaded yet compiles the chain it asks for at its batch size, and no
    other sampler's: the first Denoise then runs without a compiling note."""
    models = Models({"tiny": (model_path, model_path)}, chunk_size=CHUNK)
    demo = Demo(models, "tiny", min_interval=0.0)
    s = Session()
    list(demo.reset(s, "tiny", False, 0, 2, "dpmpp_2m", 8))
    chain = models.get("tiny", False, "dpmpp_2m", 8)
    assert chain._denoise_chunk._cache_size() == 1  # dpmpp_2m at batch 2 only: not DDPM, not batch 1
    views = list(demo.denoise(s, 8, False, True))
    assert views[-1].step == 0 and not any("compiling" in str(v.status) for v in views)
    assert models.first_run(models.get("tiny"), "denoise", 2)  # DDPM compiles on first use
    list(demo.reset(Session(), "tiny", False, 0, 1, "ddim", 5))  # a loaded model: Reset compiles nothing
    assert chain._denoise_chunk._cache_size() == 1


@pytest.mark.parametrize("kind", ["denoise", "diffuse"])
def test_a_first_click_waits_for_the_warm_up_of_its_chain(model_path, monkeypatch, kind):
    """A Denoise or Diffuse that comes while the server's start-up compiles the same chain waits for
    that compilation (and then says nothing about compiling) instead of compiling it a second time."""
    from ddpm_jax.demo import models as models_module

    started, release = threading.Event(), threading.Event()
    monkeypatch.setattr(models_module, "warm_up", lambda chain, n: started.set() or release.wait(30))
    models = Models({"tiny": (model_path, model_path)}, chunk_size=CHUNK)
    chain = models.get("tiny")
    warming = threading.Thread(target=models.warm_chain, args=(chain, 1))
    warming.start()
    assert started.wait(30)
    first = []
    click = threading.Thread(target=lambda: first.append(models.first_run(chain, kind, 1)))
    click.start()
    click.join(0.5)
    assert click.is_alive()  # waiting for the warm-up
    release.set()
    warming.join(30)
    click.join(30)
    assert first == [False]


def test_views_bind_fields_by_name():
    from ddpm_jax.demo.views import KEEP, View, bind

    skip = lambda: "SKIP"  # noqa: E731
    one = bind(lambda: View(step=3, status="hi"), ("status", "image", "step"), skip)
    assert one() == ("hi", "SKIP", 3)
    assert bind(lambda: View(download="f.png"), ("download",), skip)() == "f.png"

    def chain():
        yield View(step=1)
        yield View(step=0, bar="<div>")

    assert list(bind(chain, ("step", "bar"), skip)()) == [(1, "SKIP"), (0, "<div>")]
    assert View().image is KEEP
    with pytest.raises(ValueError, match="no View fields"):
        bind(chain, ("steps",), skip)


def test_a_dpm_solver_chain_split_by_the_page_equals_one_call(models):
    """Sampler and chain length take effect at Reset; the step counts along the chain;
    DPM-Solver++'s previous prediction carries over between presses."""
    demo, s = Demo(models, "tiny", min_interval=0.0), Session()
    outs = list(demo.reset(s, "tiny", False, 3, 2, "dpmpp_2m", 10))
    assert outs[-1].step == 10 and "dpmpp_2m over 10 steps" in outs[-1].status
    assert [v.step for v in demo.denoise(s, 4, False, True)][-1] == 6
    assert [v.step for v in demo.denoise(s, 6, False, True)][-1] == 0
    direct = models.get("tiny").respaced(10, "dpmpp_2m").denoise(2, key=3)
    np.testing.assert_array_equal(np.asarray(s.x), np.asarray(direct))
    chunk = models.get("tiny")._denoise_chunk  # shared by every chain of the model
    compiled = chunk._cache_size()
    list(demo.reset(s, "tiny", False, 4, 2, "dpmpp_2m", 7))  # another chain length: compiled once per sampler
    assert [v.step for v in demo.denoise(s, 7, False, True)][-1] == 0
    assert chunk._cache_size() == compiled
    bad = list(demo.reset(s, "tiny", False, 3, 2, "dpmpp_2m", T))
    assert "chain steps must be between 0 and 39" in bad[-1].status and s.step == 0
    assert list(demo.reset(s, "tiny", False, 3, 2, "ddim", 0))[-1].step == T  # 0: all T steps


def test_a_distilled_model_runs_its_own_chain_whatever_the_page_says(model_path, tmp_path):
    """A distilled model learned only its own timesteps: the page's sampler and chain steps
    give way to its chain, and the status line says so."""
    tiny = Diffusion.from_pretrained(model_path)
    config = dataclasses.replace(tiny.diffusion_config, prediction_type="v", distilled_steps=4)
    path = str(tmp_path / "distilled.safetensors")
    save_weights(path, tiny.params, diffusion_config=config, unet_config=tiny.unet_config)
    models = Models({"tiny4": (path, path)}, chunk_size=CHUNK)
    demo, s = Demo(models, "tiny4", min_interval=0.0), Session()
    out = list(demo.reset(s, "tiny4", False, 3, 2, "dpmpp_2m", 10))[-1]
    assert out.step == 4 and "distilled: its own ddim_trailing chain of 4 steps" in out.status, out.status
    assert out.per_click == 4  # the page's steps per Denoise: the whole chain
    assert [v.step for v in demo.denoise(s, out.per_click, False, True)][-1] == 0
    direct = Diffusion.from_pretrained(path).denoise(2, key=3)
    np.testing.assert_array_equal(np.asarray(s.x), np.asarray(direct))
    assert list(demo.reset(s, "tiny4", False, 3, 2, "ddpm", None))[-1].step == 4
