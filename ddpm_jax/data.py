"""Training images as one NHWC float32 array in [-1, 1].

Sources: scikit-learn's bundled 8x8 digits (no download), a `.npy`/`.npz`
array, or a folder of image files (PNG, JPEG, TIFF, BMP, WebP, of any mode:
`images.load_image`). Every loader returns images at the model's resolution
and channel count; batches are drawn inside the jitted
train step (see `train.py`), so the data never leaves this array.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .images import load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

# The fixed split of load_digits shared by training (`digits`) and
# bench/digits_quality.py (its held-out part is never trained on).
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y): 8x8 digits in [0, 16], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.images.astype(np.float32),
        d.target,
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=d.target,
    )
    return x_tr, y_tr, x_te, y_te


def digits_to_images(digits: np.ndarray, resolution: int) -> np.ndarray:
    """(n, 8, 8) digits in [0, 16] -> (n, R, R, 1) float32 in [-1, 1], bicubic."""
    out = np.stack([_resize_float(d / 16.0, resolution) for d in digits])
    return (np.clip(out, 0.0, 1.0) * 2.0 - 1.0)[..., None].astype(np.float32)


def images_to_digits(x: np.ndarray) -> np.ndarray:
    """(n, R, R, 1) in [-1, 1] -> (n, 8, 8) in [0, 16], by area averaging."""
    x = (np.clip(np.asarray(x, np.float32)[..., 0], -1.0, 1.0) + 1.0) * 8.0
    n, r, _ = x.shape
    if r % 8:
        return np.stack([_resize_float(im, 8, Image.Resampling.BOX) for im in x])
    f = r // 8
    return x.reshape(n, 8, f, 8, f).mean(axis=(2, 4))


def _resize_float(img: np.ndarray, size: int, method=Image.Resampling.BICUBIC) -> np.ndarray:
    return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), method))


def load_digits_images(resolution: int, channels: int = 1) -> np.ndarray:
    """The training split of scikit-learn's digits as (n, R, R, C) in [-1, 1]."""
    x = digits_to_images(digits_split()[0], resolution)
    return np.repeat(x, channels, axis=-1) if channels != 1 else x


def load_array(path, resolution: int, channels: int) -> np.ndarray:
    """A `.npy` or `.npz` (first array) of NHWC images: uint8, or floats in [-1, 1]."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npy/.npz array ({err})") from err
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if not loaded.files:
                raise ValueError(f"{path} holds no arrays")
            x = loaded[loaded.files[0]]
    else:
        x = loaded
    if x.ndim == 3:
        x = x[..., None]
    want = (resolution, resolution, channels)
    if x.ndim != 4 or x.shape[1:] != want:
        raise ValueError(
            f"{path} holds an array of shape {x.shape}; expected (n, {resolution}, "
            f"{resolution}, {channels}) NHWC for this model (or (n, H, W) grayscale)"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 127.5 - 1.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < -1.0 or x.max() > 1.0:
        raise ValueError(
            f"{path}: float images must be finite and in [-1, 1], got "
            f"[{np.nanmin(x):.3f}, {np.nanmax(x):.3f}]; store uint8 or rescale"
        )
    return x


def load_folder(path, resolution: int, channels: int, *, strict: bool = False) -> np.ndarray:
    """Every image file (`IMAGE_SUFFIXES`) under `path` (recursive, sorted),
    center-cropped and resized.

    Each goes through `images.load_image` (every Pillow mode, by its real bit
    depth). Other files, images that fail to decode and decompression bombs
    are skipped with a warning naming them, or raise ValueError with `strict`.
    """
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    images, skipped = [], []
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((f, f"not a {'/'.join(IMAGE_SUFFIXES)} file"))
            continue
        try:
            images.append(load_image(f, resolution, channels))
        except (OSError, ValueError) as err:  # UnidentifiedImageError is an OSError
            skipped.append((f, f"unreadable image: {err}"))
    if skipped:
        listing = "; ".join(f"{f} ({why})" for f, why in skipped)
        if strict:
            raise ValueError(f"{len(skipped)} bad file(s) in {root}: {listing}")
        log.warning("skipping %d file(s) in %s: %s", len(skipped), root, listing)
    if not images:
        raise ValueError(f"no readable {'/'.join(IMAGE_SUFFIXES)} images in {root}")
    return np.stack(images)


def load_dataset(spec: str, resolution: int, channels: int, *, strict: bool = False) -> np.ndarray:
    """`digits`, a .npy/.npz file or an image folder -> (n, R, R, C) float32 in [-1, 1]."""
    if spec == "digits":
        return load_digits_images(resolution, channels)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder(path, resolution, channels, strict=strict)
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        return load_array(path, resolution, channels)
    if path.exists():
        raise ValueError(f"--data {spec}: expected an image folder or a .npy/.npz file")
    raise FileNotFoundError(f"--data {spec}: no such file or folder (or use 'digits')")
