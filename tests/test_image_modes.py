"""Images of every mode Pillow reads load to [-1, 1] by their
real bit depth (one loader, `images.load_image`, used by the training data),
and a decompression bomb in a training folder is skipped like any bad file."""

from __future__ import annotations

import logging
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.data import load_folder
from ddpm_jax.images import load_image


def png(path, arr: np.ndarray, color_type: int, depth: int = 16, size=None):
    """A PNG written by hand (Pillow cannot write 16-bit color): big-endian
    samples, filter 0 on every row. `size` overrides the header's (w, h)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[y].astype(">u2" if depth == 16 else np.uint8).tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    w, h = size or (w, h)
    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def unit(values, full):
    """Integers on a 0..full scale -> the [-1, 1] the loader must give."""
    return np.asarray(values, np.float64) / full * 2 - 1


G8 = np.array([[0, 64, 128, 255]], np.uint8)
G16 = np.array([[0, 257 * 64, 32768, 65535]], np.uint16)
RGB8 = np.array([[[0, 0, 0], [255, 0, 0], [10, 200, 30], [255, 255, 255]]], np.uint8)


def _save(img: Image.Image, path):
    img.save(path)
    return path


# mode -> (make the file in a folder, the expected HWC [-1, 1] values)
CASES = {
    "1": (lambda d: _save(Image.fromarray(G8 > 100), d / "a.png"), unit([[[0], [0], [1], [1]]], 1)),
    "L": (lambda d: _save(Image.fromarray(G8), d / "a.png"), unit(G8[..., None], 255)),
    "LA": (
        lambda d: _save(Image.fromarray(np.stack([G8, np.zeros_like(G8)], -1), "LA"), d / "a.png"),
        unit(G8[..., None], 255),
    ),  # alpha dropped, as torchvision's and diffusers' loaders do
    "P": (lambda d: _save(Image.fromarray(RGB8).quantize(4), d / "a.png"), unit(RGB8, 255)),
    "RGB": (lambda d: _save(Image.fromarray(RGB8), d / "a.png"), unit(RGB8, 255)),
    "RGBA": (
        lambda d: _save(Image.fromarray(np.concatenate([RGB8, np.zeros_like(RGB8[..., :1])], -1)), d / "a.png"),
        unit(RGB8, 255),
    ),
    "CMYK": (
        lambda d: _save(
            Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], np.uint8), "CMYK"), d / "a.tif"
        ),
        unit([[[255, 255, 255], [0, 0, 0], [0, 255, 255]]], 255),
    ),
    "I;16": (lambda d: _save(Image.fromarray(G16), d / "a.png"), unit(G16[..., None], 65535)),
    "I;16B": (lambda d: _save(Image.fromarray(G16.astype(">u2")), d / "a.tif"), unit(G16[..., None], 65535)),
    "I": (
        lambda d: _save(Image.fromarray(np.array([[0, 2**30, 2**31 - 1]], np.int32)), d / "a.tif"),
        unit([[[0], [2**30], [2**31 - 1]]], 2**31 - 1),
    ),
    "F": (
        lambda d: _save(Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32)), d / "a.tif"),
        np.array([[[-1.0], [-0.5], [1.0]]]),
    ),
    "RGB 16-bit PNG": (
        lambda d: png(d / "a.png", np.stack([G16, G16 // 2, 65535 - G16], -1)[0][None], 2),
        unit(np.stack([G16 >> 8, (G16 // 2) >> 8, (65535 - G16) >> 8], -1), 255),
    ),
    "gray 16-bit PNG": (lambda d: png(d / "a.png", G16, 0), unit(G16[..., None], 65535)),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_every_mode_loads_by_its_real_bit_depth(tmp_path, mode):
    make, want = CASES[mode]
    path = make(tmp_path)
    if " " not in mode:
        with Image.open(path) as im:
            assert im.mode == mode  # the file really is of that mode
    x = load_image(path)
    assert x.dtype == np.float32 and x.shape == want.shape
    np.testing.assert_allclose(x, want, atol=1e-6)
    # Training reads the same values (a 1-row image cropped to 1x1: its middle pixel).
    w = want.shape[1]
    got = load_folder(tmp_path, 1, want.shape[-1])
    np.testing.assert_allclose(got[0, 0, 0], want[0, (w - 1) // 2], atol=1e-6)


def test_sixteen_bit_gray_is_not_white_in_training(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    x = load_folder(tmp_path, 8, 1)[0, ..., 0]
    np.testing.assert_allclose(x, ramp / 65535 * 2 - 1, atol=1e-6)
    assert (x < 0).mean() > 0.5  # was all 1.0: Pillow's "L" conversion clips 16-bit values at 255
    rgb = load_folder(tmp_path, 4, 3)  # gray repeated into 3 channels, resized in float
    assert rgb.shape == (1, 4, 4, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.parametrize(
    "make, says",
    [
        (
            lambda d: _save(Image.fromarray(np.array([[0.0, 255.0]], np.float32)), d / "f.tif"),
            r"mode F image with values in \[0, 255\]; expected \[0, 1\]",
        ),
        (lambda d: _save(Image.fromarray(np.array([[0.0, np.nan]], np.float32)), d / "f.tif"), "mode F image"),
        (lambda d: _save(Image.fromarray(np.array([[-5, 7]], np.int32)), d / "i.tif"), r"values in \[-5, 7\]"),
    ],
)
def test_values_a_mode_cannot_hold_are_refused_not_clipped(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=says):
        load_image(path)


def test_channels_and_resize(tmp_path):
    path = _save(Image.fromarray(RGB8), tmp_path / "a.png")
    gray = load_image(path, channels=1)  # Pillow's "L": ITU-R 601-2 luma
    np.testing.assert_allclose(gray[0, 2, 0], unit(round((10 * 299 + 200 * 587 + 30 * 114) / 1000), 255))
    with Image.open(path) as im:
        assert load_image(im, resolution=1).shape == (1, 1, 3)  # a PIL image works too
    with pytest.raises(ValueError, match="channels=2"):
        load_image(path, channels=2)


def test_a_decompression_bomb_in_a_training_folder_is_skipped(tmp_path, caplog):
    Image.fromarray(G8).save(tmp_path / "good.png")
    # 40000 x 40000 pixels announced (1.6 G, 1.6 GB as "L"), 2 kB on disk.
    png(tmp_path / "bomb.png", np.zeros((1, 8), np.uint8), 0, depth=8, size=(40000, 40000))
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ddpm_jax.data"):
            x = load_folder(tmp_path, 1, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (1, 1, 1, 1) and peak < 20 * 2**20, peak
    assert "bomb.png" in caplog.text and "decompression bomb" in caplog.text
    with pytest.raises(ValueError, match=r"1 bad file\(s\).*bomb\.png.*decompression bomb"):
        load_folder(tmp_path, 1, 1, strict=True)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_limit_is_pillows_own_setting(tmp_path, monkeypatch):
    path = _save(Image.fromarray(np.zeros((120, 120), np.uint8)), tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow warns above 1x, raises above 2x
    with pytest.raises(ValueError, match="120x120 pixels.*MAX_IMAGE_PIXELS = 10000"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    assert load_image(path).shape == (120, 120, 1)
