"""The served page under hostile clients: wrong types get the page's message (which
names no server path), downloads do not pile up, the GIF and the trajectory stay within
their budgets, pictures are bounded in pixels before they are decoded, uploads (per
client and in total), the queue and the compiled chains are bounded."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.demo import editing, render
from ddpm_jax.demo import handlers as handlers_mod
from ddpm_jax.demo.app import build_app
from ddpm_jax.demo.handlers import Demo
from ddpm_jax.demo.pictures import MAX_PICTURE_PIXELS, MAX_SIDE
from ddpm_jax.demo.state import Session, Trajectory
from ddpm_jax.demo.uploads import MB, UploadQuota

from .helpers import T, demo_client, script_env, serving

gradio_client = pytest.importorskip("gradio_client")
get_upload_folder = pytest.importorskip("gradio.utils").get_upload_folder


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


def test_wrong_types_get_the_pages_message_and_no_traceback(url, capfd):
    c = demo_client(url)
    c.predict("tiny", False, 1, 1, api_name="/reset")
    before = c.predict(4, False, True, api_name="/denoise")
    capfd.readouterr()
    for endpoint, args, fragment in WRONG_TYPES:
        out = c.predict(*args, api_name=endpoint)
        status = out[1] if endpoint == "/branch" else out[2]
        assert status.startswith("⚠️") and fragment in status, (endpoint, args, status)
    assert "Traceback" not in capfd.readouterr().err
    assert c.predict(False, api_name="/view")[1] == before[1] == T - 4


FILE = {"_type": "gradio.FileData"}
WRONG_PICTURES = [
    # (endpoint, args, message fragment): anything but a file uploaded to this server
    ("/use_image", ("hello", False), "the picture must be an uploaded file, got str"),
    ("/use_image", ("https://example.com/x.png", False), "the picture must be uploaded, not a URL"),
    ("/use_image", ({"path": "https://example.com/x.png", "meta": FILE}, False), "must be uploaded, not a URL"),
    ("/use_image", ({"path": "SERVER_FILE", "meta": FILE}, False), "not a file uploaded to this server"),
    ("/use_image", ({"path": "SERVER_FILE"}, False), "the picture must be an uploaded file, got dict"),
    ("/use_image", ({"path": "/tmp/a\u0000b", "meta": FILE}, False), "not a file uploaded to this server"),
    ("/use_image", (7, False), "the picture must be an uploaded file, got int"),
    ("/inpaint", ("hello", 10, 3, 2, False, True), "the editor's value must be a dict"),
    ("/inpaint", ({"background": "x.png"}, 10, 3, 2, False, True), "the editor's picture must be an uploaded file"),
    ("/inpaint", ({"layers": [{"path": "SERVER_FILE", "meta": FILE}]}, 10, 3, 2, False, True), "paint layer 1 is"),
    ("/interpolate", ("sample 0", None, "upload", "hello", 0, 20, 3, True), "picture B must be an uploaded file"),
]
STATUS = {"/interpolate": 1}  # where an endpoint's status line is (else 2)


def call_raw(url, endpoint, *args):
    """An API call with `args` sent as they are (gradio_client would upload a file they name): its outputs."""
    import httpx

    event = httpx.post(f"{url}gradio_api/call{endpoint}", json={"data": list(args)}).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call{endpoint}/{event}", timeout=120).text
    return json.loads(stream.rsplit("data:", 1)[1])  # the last event's: complete, or error (null)


def test_a_picture_that_is_not_an_upload_gets_the_pages_message(url, tmp_path, capfd):
    """A string, a URL (Gradio would fetch it), a path of the server (it would read it): all refused before
    Gradio reads them, with the page's message naming no server path."""
    server_file = str(tmp_path / "elsewhere.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(server_file)
    capfd.readouterr()
    for endpoint, args, fragment in WRONG_PICTURES:
        args = json.loads(json.dumps(args).replace("SERVER_FILE", server_file))
        out = call_raw(url, endpoint, *args)
        assert isinstance(out, list), (endpoint, args, out)  # the outputs, not an error without a message
        status = out[STATUS.get(endpoint, 2)]
        assert status.startswith("⚠️") and fragment in status, (endpoint, args, status)
        assert str(tmp_path) not in status
    assert "Traceback" not in capfd.readouterr().err


def test_served_downloads_are_deleted_on_a_timer(demo_models, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(handlers_mod, "DOWNLOAD_TTL_S", 0.4)
    with serving(demo_models) as url:
        c = demo_client(url)
        c.predict("tiny", False, 0, 1, api_name="/reset")
        c.predict(T, False, True, api_name="/denoise")
        for _ in range(3):
            assert Image.open(c.predict(api_name="/save_gif")).format == "GIF"  # served from Gradio's copy
            assert Image.open(c.predict(True, api_name="/save_image")).format == "PNG"
        (ours,) = tmp_path.glob("ddpm_jax_demo_*")
        deadline = time.monotonic() + 5
        while any(ours.iterdir()) and time.monotonic() < deadline:  # no further download needed
            time.sleep(0.1)
        assert not any(ours.iterdir())


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
    Image.fromarray(np.full((8, 8), 2.0, np.float32)).save(tmp_path / "floats.tif")  # F is [0, 1]
    for name, fragment in (
        ("junk.png", "cannot identify image file"),
        ("bomb.png", "decompression bomb"),
        ("floats.tif", "floats.tif: a mode f image with values in [2, 2]"),  # the file's name, not its path
    ):
        out = c.predict(gradio_client.handle_file(str(tmp_path / name)), False, api_name="/use_image")
        assert out[2].startswith("⚠️") and fragment in out[2].lower(), out[2]
        assert get_upload_folder() not in out[2] and str(tmp_path) not in out[2]
        assert out[1] == 0  # still the 16-bit picture


def test_pictures_over_the_pixel_bound_are_refused_before_decoding(url, tmp_path):
    """Every path that takes a picture: the upload, an end of an interpolation, the editor's picture and layers."""
    over = _save(tmp_path / "over.png", _png_header_only(MAX_SIDE + 1, MAX_SIDE))  # no pixel data to decode
    ok = _save(tmp_path / "ok.png", np.zeros((8, 8), np.uint8))
    says = f"is {MAX_SIDE + 1}x{MAX_SIDE} pixels; the page takes at most {MAX_PICTURE_PIXELS:,}"
    c = demo_client(url)
    c.predict("tiny", False, 0, 1, api_name="/reset")
    file = gradio_client.handle_file

    def edit(background, layer):
        return {"background": file(background), "layers": [file(layer)], "composite": None}

    for what, status in (
        ("the picture", c.predict(file(over), False, api_name="/use_image")[2]),
        ("picture B", c.predict("sample 0", None, "upload", file(over), 0, 20, 3, True, api_name="/interpolate")[1]),
        ("the editor's picture", c.predict(edit(over, ok), 10, 3, 2, False, True, api_name="/inpaint")[2]),
        ("paint layer 1", c.predict(edit(ok, over), 10, 3, 2, False, True, api_name="/inpaint")[2]),
    ):
        assert status.startswith(f"⚠️ {what} {says}"), status
    assert c.predict(False, api_name="/view")[1] == T  # nothing changed


def test_the_editor_makes_no_full_size_float_copy():
    """A picture and a layer at the page's size: block sums of the 8-bit pixels, no float64 copy of them."""
    side = 2048
    picture = Image.fromarray(np.repeat(np.repeat(np.eye(8, dtype=np.uint8) * 255, side // 8, 0), side // 8, 1))
    layer = Image.new("RGBA", (side, side))
    layer.paste((255, 0, 0, 255), (0, 0, side // 2, side))
    tracemalloc.start()
    x = editing.picture_at(picture.convert("RGB"), 8, 1)
    fill = editing.fill_mask([layer], (side, side), 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(x[..., 0], np.eye(8) * 2 - 1)  # the enlarged picture back exactly
    assert fill[:, :4].all() and not fill[:, 4:].any()
    assert peak < 2.5 * side * side * 3, peak  # Pillow's bytes and their array; a float64 copy is 8 times


def _save(path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        Image.fromarray(content).save(path)
    return str(path)


def test_uploads_are_bounded_per_client_and_in_total():
    now = [0.0]
    quota = UploadQuota(None, per_client_mb=1, total_mb=1.5, window_s=660, clock=lambda: now[0])
    half = MB // 2
    assert quota.admit("a", half) is None and quota.admit("a", half) is None
    status, message = quota.admit("a", 1)  # counts as MIN_CHARGE
    assert status == 413 and "this client has uploaded 1.0 MB in the last 11 minutes" in message
    assert "--max-client-upload-mb" in message
    assert quota.admit("b", half) is None
    status, message = quota.admit("c", 1)
    assert status == 413 and "the server has taken 1.5 MB" in message and "--max-total-upload-mb" in message
    assert quota.admit("c", None)[0] == 411
    now[0] = 660.0  # the first uploads are gone from disk by now
    assert quota.admit("a", MB) is None
    assert quota._by_client == {"a": MB} and len(quota._log) == 1  # what is kept is the window's uploads


def test_the_served_upload_route_counts_what_a_client_sent(demo_models):
    import httpx

    limits = dict(client_upload_mb=0.3, total_upload_mb=10)
    with serving(demo_models, max_upload_mb=0.2, limits=limits) as url:
        upload = f"{url}gradio_api/upload"
        sent = [httpx.post(upload, files={"files": ("a.png", b"x" * 100_000)}) for _ in range(4)]
        assert [r.status_code for r in sent] == [200, 200, 200, 413], [r.text for r in sent]
        assert "this client has uploaded 0.3 MB" in sent[-1].text
        chunked = httpx.post(upload, content=iter([b"--x\r\n"]), headers={"content-type": "multipart/form-data"})
        assert chunked.status_code == 411


def test_new_chain_lengths_compile_nothing_and_their_tables_are_bounded(demo_models, monkeypatch):
    """Every (sampler, chain steps) a client may pick at Reset: no program of its own, and the
    chain's tables in a cache of the most recently used."""
    import jax

    demo, s = Demo(demo_models, "tiny", min_interval=0.0), Session()
    model = demo_models.get("tiny")
    monkeypatch.setattr(model, "TABLES_KEPT", 4)
    for steps in (5, 6):  # strided DDPM chains: the warm-up's program serves every length
        list(demo.reset(s, "tiny", False, 0, 1, "ddpm", steps))
        list(demo.denoise(s, steps, False, True))
    traced = []

    def listener(event, duration, **kwargs):
        traced.append((event, kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for steps in range(7, 16):
            list(demo.reset(s, "tiny", False, 0, 1, "ddpm", steps))
            assert list(demo.denoise(s, 1, False, True))[-1].step == steps - 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not [e for e in traced if e[0].startswith("/jax/core/compile/")], traced
    model.chain("ddpm", 12)  # used again: now the most recent
    model.chain("ddpm", 20)
    assert len(model._tables) <= 4 and ("even", 12) in model._tables and ("even", 20) in model._tables


SIGTERM_SCRIPT = """
import sys, time
from ddpm_jax.demo import cli
from ddpm_jax.demo.handlers import Demo
from ddpm_jax.demo.models import Models
from ddpm_jax.demo.state import Session

cli.end_on_sigterm()  # as `ddpm-jax demo` does before it serves
demo = Demo(Models({"tiny": ("tiny", "tiny")}, warm=False), "tiny")
demo._out(Session(), "image", ".png").write_bytes(b"a download")
try:  # the signal may land while print returns: inside the try, as in launch()
    print(demo.workdir, flush=True)
    while True:  # Gradio's launch() waits so, and returns on KeyboardInterrupt
        time.sleep(0.05)
except KeyboardInterrupt:
    pass
"""


def test_sigterm_removes_the_download_folder_as_ctrl_c_does(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = script_env(TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        folder = Path(proc.stdout.readline().strip())
        assert folder.parent == tmp_path and any(folder.iterdir())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert not folder.exists()
