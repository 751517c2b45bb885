"""The served page under hostile clients: wrong types get the page's message,
downloads do not pile up, the GIF and the trajectory stay within their budgets,
uploads and the queue are bounded."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.demo import handlers as handlers_mod
from ddpm_jax.demo import render
from ddpm_jax.demo.app import build_app
from ddpm_jax.demo.handlers import Demo
from ddpm_jax.demo.state import Session, Trajectory

from .helpers import T, demo_client, serving

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def url(demo_models):
    with serving(demo_models, max_upload_mb=0.05) as url:
        yield url


WRONG_TYPES = [
    # (endpoint, args, message fragment): each value of a type the page never sends
    ("/reset", ("tiny", "yes", 0, 1), "EMA must be true or false"),
    ("/reset", ("tiny", False, 0, "many"), "batch size must be a whole number"),
    ("/reset", ("tiny", False, 0, 99), "batch size must be between 1 and 16"),
    ("/reset", (["tiny"], False, 0, 1), "unknown model"),
    ("/reset", ("tiny", False, {"a": 1}, 1), "seed must be a whole number"),
    ("/denoise", ([3], False, True), "steps must be a whole number"),
    ("/denoise", (3, False, "no"), "clip must be true or false"),
    ("/branch", ("two", True), "branches must be a whole number"),
]


def test_wrong_types_get_the_pages_message_and_no_traceback(url, caplog):
    c = demo_client(url)
    c.predict("tiny", False, 1, 1, api_name="/reset")
    before = c.predict(4, False, True, api_name="/denoise")
    with caplog.at_level(logging.WARNING):
        for endpoint, args, fragment in WRONG_TYPES:
            out = c.predict(*args, api_name=endpoint)
            status = out[1] if endpoint == "/branch" else out[2]
            assert status.startswith("⚠️") and fragment in status, (endpoint, args, status)
    assert "Traceback" not in caplog.text and "raised an exception" not in caplog.text
    assert c.predict(False, api_name="/view")[1] == before[1] == T - 4


def test_served_downloads_do_not_pile_up(demo_models, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(handlers_mod, "DOWNLOAD_TTL_S", 0)  # every older file is stale at the next download
    with serving(demo_models) as url:
        c = demo_client(url)
        c.predict("tiny", False, 0, 1, api_name="/reset")
        c.predict(T, False, True, api_name="/denoise")
        for _ in range(3):
            assert Image.open(c.predict(api_name="/save_gif")).format == "GIF"  # served from Gradio's copy
            assert Image.open(c.predict(True, api_name="/save_image")).format == "PNG"
        (ours,) = tmp_path.glob("ddpm_jax_demo_*")
        assert len(list(ours.iterdir())) == 1  # the newest only


def test_the_download_folder_goes_at_close_and_a_closed_tab_takes_its_files(demo_models, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    demo, s = Demo(demo_models, "tiny"), Session()
    list(demo.reset(s, "tiny", False, 0, 1))
    path = demo.save_image(s, False).download
    assert Image.open(path).size == (8, 8) and s.downloads
    demo.forget_downloads(s)  # what Gradio's State calls when the tab's session ends
    assert not list(demo.workdir.iterdir()) and not s.downloads
    demo.save_gif(s)
    folder = demo.workdir
    demo.close()
    assert not folder.exists() and demo.workdir is None


def test_gif_is_bounded_by_its_enlarged_size():
    """A long trajectory of small frames: without the bound each would be enlarged to 512x512."""
    frames = [np.full((16, 16, 1), i % 256, np.uint8) for i in range(3000)]
    kept, scale = render.gif_frames(frames, max_side=512, budget_bytes=8 * 2**20, max_frames=400)
    assert scale == 32 and len(kept) == (8 * 2**20) // (512 * 512)  # 32 frames of 256 KiB
    assert kept[0] is frames[0] and kept[-1] is frames[-1]
    kept, scale = render.gif_frames(frames[:10], 512, 8 * 2**20, 400)
    assert len(kept) == 10 and scale == 32
    big = [np.zeros((1000, 1000, 3), np.uint8)] * 5  # one frame alone over budget: no enlarging
    kept, scale = render.gif_frames(big, 512, 8 * 2**20, 400)
    assert scale == 1 and len(kept) == 2


def test_save_gif_memory_stays_within_the_budget(demo_models, monkeypatch):
    monkeypatch.setattr(handlers_mod, "GIF_BUDGET_BYTES", 4 * 2**20)
    demo, s = Demo(demo_models, "tiny"), Session()
    list(demo.reset(s, "tiny", False, 0, 16))  # a 4x4 grid of 8x8 samples: 42x42 frames
    s.trajectory = Trajectory(budget_bytes=2**30, max_frames=10**6)
    for i in range(4000):
        s.trajectory.add(np.full((42, 42, 1), i % 256, np.uint8))
    tracemalloc.start()
    path = demo.save_gif(s).download
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gif = Image.open(path)
    assert gif.n_frames * gif.width * gif.height <= 4 * 2**20
    assert peak < 3 * 4 * 2**20, peak
    demo.close()


def test_trajectory_caps_its_frame_count():
    traj = Trajectory(budget_bytes=2**30, max_frames=100)
    for i in range(5000):
        traj.add(np.full((2, 2, 1), i % 256, np.uint8))
    assert len(traj.frames) <= 100 and traj.frames[0][0, 0, 0] == 0


def test_an_upload_over_the_limit_is_refused(url, tmp_path):
    c = demo_client(url)
    c.predict("tiny", False, 0, 1, api_name="/reset")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)  # ~190 kB as PNG, limit 50 kB
    Image.fromarray(noise).save(tmp_path / "big.png")
    with pytest.raises(Exception, match=r"(?i)exceeds the maximum file size|too large|413"):
        c.predict(gradio_client.handle_file(str(tmp_path / "big.png")), False, api_name="/use_image")
    assert c.predict(False, api_name="/view")[1] == T  # nothing changed


def test_the_queue_is_bounded(demo_models):
    app = build_app(demo_models, "tiny", queue_size=3)
    assert app._queue.max_size == 3


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): a decompression bomb's opening."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_uploads_load_at_their_bit_depth_and_bad_files_get_a_message(url, tmp_path):
    c = demo_client(url)
    c.predict("tiny", False, 0, 1, api_name="/reset")
    pic = np.zeros((8, 8), np.uint16)
    pic[:, 4:] = 49152  # 3/4 of 16-bit white: x_0 = 0.5 on the right, -1 on the left
    Image.fromarray(pic).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    out = c.predict(gradio_client.handle_file(str(tmp_path / "deep.png")), False, api_name="/use_image")
    assert out[1] == 0, out[2]
    shown = np.asarray(Image.open(out[0]))[:: render.display_scale(8), :: render.display_scale(8)]
    assert shown[:, :4].max() == 0 and abs(int(shown[:, 4:].mean()) - 191) <= 1  # (0.5 + 1) * 127.5
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    for name, fragment in (("junk.png", "cannot identify image file"), ("bomb.png", "decompression bomb")):
        out = c.predict(gradio_client.handle_file(str(tmp_path / name)), False, api_name="/use_image")
        assert out[2].startswith("⚠️") and fragment in out[2].lower(), out[2]
        assert out[1] == 0  # still the 16-bit picture
