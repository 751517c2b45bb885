"""The inpainting and interpolation panels' pure parts: the picture and the mask
from what the image editor sends, at the model's resolution. Numpy in, numpy out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ddpm_jax.images import load_image

# A model pixel is filled when the painted strokes cover at least this much of it.
MIN_COVER = 0.25


def _blocks(a: np.ndarray, resolution: int) -> np.ndarray | None:
    """(R, R, ...) means of the k x k blocks of an (kR, kR, ...) array; None if not a multiple."""
    h, w = a.shape[:2]
    if h != w or h % resolution:
        return None
    k = h // resolution
    return a.reshape(resolution, k, resolution, k, *a.shape[2:]).mean(axis=(1, 3))


def picture_at(img: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """An HWC uint8 picture from the page -> x_0, (R, R, C) float32 in [-1, 1].

    The page shows a model's images enlarged k times (nearest), so such a
    picture comes back exactly (block means of identical pixels); any other
    is center-cropped and resized as uploads are (`images.load_image`).
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype == np.uint8 and (small := _blocks(img.astype(np.float64), resolution)) is not None:
        if channels == 1 and small.shape[-1] == 3:
            if not (np.ptp(small, axis=-1) == 0).all():  # a color picture for a grayscale model
                return load_image(Image.fromarray(img), resolution, channels)
            small = small[..., :1]
        elif channels == 3 and small.shape[-1] == 1:
            small = np.repeat(small, 3, axis=-1)
        if np.array_equal(small, np.round(small)):
            return (small / 127.5 - 1.0).astype(np.float32)
    return load_image(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img), resolution, channels)


def fill_mask(layers: list, size: tuple[int, int], resolution: int) -> np.ndarray:
    """The editor's paint layers (RGBA, painted where alpha > 0) -> (R, R) bool, True = fill.

    Raises ValueError when nothing is painted or a layer's size is not the picture's.
    """
    painted = np.zeros(size, bool)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.shape[:2] != size:
            raise ValueError(
                f"the mask is {layer.shape[1]}x{layer.shape[0]} but the picture "
                f"{size[1]}x{size[0]}: paint on the picture in the editor"
            )
        painted |= layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[-1] == 4 else layer.reshape(size) > 0
    if not painted.any():
        raise ValueError("no mask painted: paint over the part to fill, then press Inpaint")
    cover = _blocks(painted.astype(np.float64), resolution)
    if cover is None:  # a picture of another size: the strokes resized as the picture is
        pil = Image.fromarray(painted.astype(np.uint8) * 255)
        cover = np.asarray(load_image(pil, resolution, 1))[..., 0] * 0.5 + 0.5
    mask = cover >= MIN_COVER
    if not mask.any():
        raise ValueError("the painted strokes cover no whole pixel of the model's image: paint a wider stroke")
    return mask
