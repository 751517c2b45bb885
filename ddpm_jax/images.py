"""Images: [-1, 1] float NHWC <-> uint8, PNG files and grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import write_with


def to_uint8(x, clip: bool = False) -> np.ndarray:
    """NHWC floats in [-1, 1] -> NHWC uint8 via (x + 1) * 127.5, rounded.

    With `clip`, values are clamped to [-1, 1] first; without it, values out
    of range raise (the port's cast wrapped them around silently).
    """
    x = np.asarray(x, dtype=np.float32)
    if clip:
        x = np.clip(x, -1.0, 1.0)
    y = np.rint((x + 1.0) * 127.5)
    if not clip and (y.min() < 0 or y.max() > 255):
        raise ValueError(
            f"x has values in [{x.min():.3f}, {x.max():.3f}], outside [-1, 1]; "
            "pass clip=True to clamp them"
        )
    return y.astype(np.uint8)


def _pil(img: np.ndarray) -> Image.Image:
    """One HWC uint8 image; a single channel is saved as grayscale."""
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def save_png(img: np.ndarray, path) -> Path:
    """One HWC uint8 image as a PNG, written atomically."""
    return write_with(path, lambda f: _pil(img).save(f, format="PNG"))


def save_images(images: np.ndarray, pattern: str, start_idx: int = 0) -> list[Path]:
    """Write NHWC uint8 images to pattern.format(start_idx + i); returns paths."""
    return [save_png(img, pattern.format(start_idx + i)) for i, img in enumerate(images)]


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile NHWC uint8 images into one HWC uint8 image, `ncol` per row."""
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_grid(images: np.ndarray, path, ncol: int | None = None) -> Path:
    return save_png(make_grid(images, ncol), path)
