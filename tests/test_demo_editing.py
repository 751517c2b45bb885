"""The page's inpainting (RePaint) and interpolation panels, through gradio_client and
their handlers: the painted part changes, the rest stays the picture, bad input
gets a message and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.demo import editing, render
from ddpm_jax.demo.handlers import Demo
from ddpm_jax.demo.state import Session
from ddpm_jax.inpainting import jump_schedule

from .helpers import CHUNK, ONE_LEVEL_UNET, T, demo_client, serving

gradio_client = pytest.importorskip("gradio_client")
SCALE = render.display_scale(ONE_LEVEL_UNET.resolution)  # 8x8 shown at 256x256
R = ONE_LEVEL_UNET.resolution


@pytest.fixture(scope="module")
def url(demo_models):
    with serving(demo_models, min_interval=0.0) as url:
        yield url


def tiles(path, n) -> np.ndarray:
    """The n model-resolution tiles of a shown grid (one sample: the image itself)."""
    img = np.asarray(Image.open(path))[::SCALE, ::SCALE]
    if n == 1:
        return img[None]
    return np.stack([img[2 : 2 + R, 2 + i * (R + 2) : 2 + i * (R + 2) + R] for i in range(n)])


def painted_layer(tmp_path, size, cols) -> str:
    """An RGBA layer of the editor with columns `cols` (model pixels) painted."""
    layer = np.zeros((size, size, 4), np.uint8)
    layer[:, cols.start * SCALE : cols.stop * SCALE] = (255, 48, 48, 255)
    return _save(tmp_path / f"layer_{cols.start}_{cols.stop}.png", layer)


def test_inpaint_fills_the_painted_part_and_keeps_the_rest(url, tmp_path):
    c = demo_client(url)
    c.predict("tiny", False, 0, 2, api_name="/reset")
    before = c.predict(T, False, True, api_name="/denoise")
    picture = tiles(before[0], 2)[0]  # sample 0, uint8
    edited, status = c.predict(api_name="/to_editor")
    assert "sample 0 is in the editor" in status
    background = edited["background"]
    assert Image.open(background).size == (R * SCALE, R * SCALE)
    value = {
        "background": gradio_client.handle_file(background),
        "layers": [gradio_client.handle_file(painted_layer(tmp_path, R * SCALE, range(5, 8)))],
        "composite": None,
    }
    out = c.predict(value, 10, 3, 2, False, True, api_name="/inpaint")
    assert out[1] == 0 and "inpainted 2 completions" in out[2], out[2]
    done = tiles(out[0], 2)
    for tile in done:  # both completions: the kept columns are the picture, the painted ones filled anew
        np.testing.assert_array_equal(tile[:, :5], picture[:, :5])
        assert not np.array_equal(tile[:, 5:], picture[:, 5:])
    assert not np.array_equal(done[0][:, 5:], done[1][:, 5:])  # two different completions
    total = len(jump_schedule(10, 3, 2))  # the progress counts RePaint's iterations, jumps included
    assert total > 10 and f"{total} / {total} iterations" in out[4]


BAD_EDITS = [
    # (what the editor sends, the message)
    ("layers_none", "no mask painted"),
    ("no_background", "no picture in the editor"),
    ("small_layer", "the mask is 8x8 but the picture 128x128"),
    ("junk", "the editor's picture is not an image file Pillow reads"),
]


def test_bad_edits_get_a_message_and_change_nothing(url, tmp_path):
    c = demo_client(url)
    c.predict("tiny", False, 4, 1, api_name="/reset")
    before = c.predict(T, False, True, api_name="/denoise")
    edited, _ = c.predict(api_name="/to_editor")
    small = _save(tmp_path / "small.png", np.full((R, R, 4), 255, np.uint8))
    big = _save(tmp_path / "bg128.png", np.zeros((128, 128, 3), np.uint8))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")

    def send(name):  # fresh file handles each call (the client rewrites what it uploaded)
        bg = gradio_client.handle_file(edited["background"])
        return {
            "layers_none": {"background": bg, "layers": [], "composite": None},
            "no_background": {"background": None, "layers": [], "composite": None},
            "small_layer": {
                "background": gradio_client.handle_file(big),
                "layers": [gradio_client.handle_file(small)],
                "composite": None,
            },
            "junk": {"background": gradio_client.handle_file(junk), "layers": [], "composite": None},
            "ok": {
                "background": bg,
                "composite": None,
                "layers": [gradio_client.handle_file(painted_layer(tmp_path, R * SCALE, range(0, 4)))],
            },
        }[name]

    for name, fragment in BAD_EDITS:
        out = c.predict(send(name), 10, 3, 2, False, True, api_name="/inpaint")
        assert out[2].startswith("⚠️") and fragment in out[2], (name, out[2])
        assert out[1] == 0
        np.testing.assert_array_equal(tiles(out[0], 1), tiles(before[0], 1))
    for args, fragment in (
        ((T + 1, 3, 2), "RePaint steps must be between 1 and 40"),
        ((10, 11, 2), "jump length must be between 1 and 10"),
        ((10, 3, 0), "resamplings must be between 1 and 20"),
    ):
        out = c.predict(send("ok"), *args, False, True, api_name="/inpaint")
        assert fragment in out[2], out[2]


def _save(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_interpolate_sample_0_and_another_seed(url, tmp_path):
    c = demo_client(url)
    c.predict("tiny", False, 5, 1, api_name="/reset")
    before = c.predict(T, False, True, api_name="/denoise")
    strip, status, bar = c.predict("sample 0", None, "another seed", None, 9, 20, 4, True, api_name="/interpolate")
    assert "interpolated: A, 4 mixes through x_20, B" in status and "20 / 20" in bar
    row = tiles(strip, 6)
    np.testing.assert_array_equal(row[0], tiles(before[0], 1)[0])  # A is sample 0
    assert c.predict(False, api_name="/view")[1] == 0  # the session's x is untouched
    up = _save(tmp_path / "b.png", np.full((20, 30), 200, np.uint8))
    strip, status, _ = c.predict(
        "sample 0", None, "upload", gradio_client.handle_file(up), 0, 20, 3, True, api_name="/interpolate"
    )
    assert abs(int(tiles(strip, 5)[-1].mean()) - 200) <= 1, status  # B is the upload
    for args, fragment in (
        (("sample 0", None, "upload", None, 0, 20, 3, True), "picture B is missing"),
        (("sample 0", None, "another seed", None, 1, T + 1, 3, True), "t must be between 1 and 40"),
        (("sample 0", None, "another seed", None, 1, 10, 1, True), "k must be between 2 and 12"),
        (("elsewhere", None, "another seed", None, 1, 10, 3, True), "A must come from"),
    ):
        _, status, _ = c.predict(*args, api_name="/interpolate")
        assert status.startswith("⚠️") and fragment in status, (args, status)


def test_stop_during_inpainting_leaves_the_session_as_it_was(demo_models, tmp_path):
    demo, s = Demo(demo_models, "tiny", min_interval=0.0), Session()
    list(demo.reset(s, "tiny", False, 0, 1))
    list(demo.denoise(s, T, False, True))
    x_before = np.asarray(s.x)
    bg = demo.to_editor(s).editor["background"]
    layer = np.zeros((*bg.shape[:2], 4), np.uint8)
    layer[:, : bg.shape[1] // 2, 3] = 255
    edited = {"background": _save(tmp_path / "bg.png", bg), "layers": [_save(tmp_path / "layer.png", layer)]}
    chain = demo.inpaint(s, edited, 20, 2, 3, False, True)
    next(chain)
    assert "stopped" in demo.stop(s, False).status
    list(chain)
    np.testing.assert_array_equal(np.asarray(s.x), x_before)
    assert s.step == 0


def test_editing_helpers():
    small = np.arange(64, dtype=np.uint8).reshape(8, 8)
    big = np.repeat(np.repeat(small, 4, 0), 4, 1)
    rgb = Image.fromarray(np.repeat(big[..., None], 3, -1))
    x = editing.picture_at(rgb, 8, 1)
    assert x.shape == (8, 8, 1) and np.array_equal(np.rint((x[..., 0] + 1) * 127.5), small)
    assert editing.picture_at(rgb, 8, 3).shape == (8, 8, 3)
    assert editing.picture_at(rgb.convert("RGBA"), 8, 1).shape == (8, 8, 1)
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[:2, :, 3] = 255  # half of the first row of model pixels: covered 0.5 >= 0.25
    layer[8:9, :, 3] = 255  # a quarter of row 2
    layer[16 : 16 + 0, :, 3] = 255
    mask = editing.fill_mask([Image.fromarray(layer)], (32, 32), 8)
    assert mask[0].all() and mask[2].all() and not mask[1].any() and not mask[3:].any()
    with pytest.raises(ValueError, match="no mask painted"):
        editing.fill_mask([Image.new("RGBA", (32, 32))], (32, 32), 8)
    with pytest.raises(ValueError, match="the mask is 16x32 but the picture 32x32"):
        editing.fill_mask([Image.new("RGBA", (16, 32))], (32, 32), 8)


def test_stop_ends_drawing_another_seed_within_a_chunk(demo_models):
    """B from another seed is a whole reverse chain: it runs chunk by chunk, and a Stop ends it."""
    demo, s = Demo(demo_models, "tiny", min_interval=0.0), Session()
    list(demo.reset(s, "tiny", False, 0, 1))
    chain = demo.interpolate(s, "sample 0", None, "another seed", None, 3, 20, 4, True)
    first = next(chain)  # after B's first chunk, not its whole chain
    assert first.status == f"drawing B from its seed: step {T - CHUNK}" and f"{CHUNK} / {T} steps" in first.bar
    assert "stopped" in demo.stop(s, False).status
    assert list(chain) == []  # no more of B, no mixes
