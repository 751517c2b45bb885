"""Training data: digits, arrays, image folders (and what happens to bad files)."""

import logging

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.data import (
    digits_split,
    digits_to_images,
    images_to_digits,
    load_array,
    load_dataset,
    load_folder,
)


def test_digits_split_is_fixed_disjoint_and_scaled():
    x_tr, y_tr, x_te, y_te = digits_split()
    assert x_tr.shape == (1347, 8, 8) and x_te.shape == (450, 8, 8)
    assert set(np.unique(y_te)) == set(range(10))
    tr = {a.tobytes() for a in x_tr}
    assert sum(a.tobytes() in tr for a in x_te) < 5  # load_digits holds a few duplicates
    np.testing.assert_array_equal(digits_split()[2], x_te)
    imgs = load_dataset("digits", 16, 1)
    assert imgs.shape == (1347, 16, 16, 1) and imgs.dtype == np.float32
    assert imgs.min() == -1.0 and imgs.max() == 1.0


def test_digits_round_trip_keeps_constant_images():
    flat = np.full((2, 8, 8), 4.0, np.float32)
    np.testing.assert_allclose(images_to_digits(digits_to_images(flat, 16)), flat, atol=1e-4)


def test_folder_skips_corrupt_and_non_images_naming_them(tmp_path, caplog):
    Image.fromarray(np.full((20, 10, 3), 255, np.uint8)).save(tmp_path / "white.png")
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "black.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (tmp_path / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="ddpm_jax.data"):
        x = load_folder(tmp_path, 8, 3)
    assert x.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(x[0], -1.0, atol=0.02)  # black.jpg sorts first
    np.testing.assert_allclose(x[1], 1.0)
    assert "broken.png" in caplog.text and "notes.txt" in caplog.text
    with pytest.raises(ValueError, match=r"2 bad file\(s\).*broken\.png.*notes\.txt"):
        load_folder(tmp_path, 8, 3, strict=True)


def test_folder_center_crops_and_converts_to_grayscale(tmp_path):
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, 10:20] = 255  # the central square is white, the sides black
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = load_folder(tmp_path, 10, 1)
    assert x.shape == (1, 10, 10, 1)
    np.testing.assert_allclose(x, 1.0)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no readable"):
        load_folder(tmp_path, 8, 1)


def test_arrays_uint8_float_npz_and_bad_shapes(tmp_path):
    u8 = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)
    np.save(tmp_path / "a.npy", u8)
    np.testing.assert_allclose(load_dataset(str(tmp_path / "a.npy"), 4, 1), u8 / 127.5 - 1.0, atol=1e-6)
    np.savez(tmp_path / "b.npz", images=(u8[..., 0] / 127.5 - 1.0).astype(np.float32))
    assert load_array(tmp_path / "b.npz", 4, 1).shape == (5, 4, 4, 1)
    with pytest.raises(ValueError, match=r"shape \(5, 4, 4, 1\).*\(n, 8, 8, 1\)"):
        load_array(tmp_path / "a.npy", 8, 1)
    np.save(tmp_path / "c.npy", np.full((2, 4, 4, 1), 3.0, np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        load_array(tmp_path / "c.npy", 4, 1)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(str(tmp_path / "missing"), 4, 1)
