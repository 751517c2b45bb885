"""The inpainting and interpolation panels' pure parts: the picture and the mask
from what the image editor sends (PIL images), at the model's resolution.

Block means are taken as integer sums of the 8-bit pixels, with no full-size
float copy: a picture at the page's pixel bound stays within a few times its size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ddpm_jax.images import load_image

# A model pixel is filled when the painted strokes cover at least this much of it.
MIN_COVER = 0.25
EIGHT_BIT = ("L", "LA", "RGB", "RGBA")


def _block_sums(a: np.ndarray, resolution: int) -> tuple[np.ndarray, int] | None:
    """(R, R, ...) int64 sums of the k x k blocks of a (kR, kR, ...) array and k*k; None if not a multiple."""
    h, w = a.shape[:2]
    if h != w or h % resolution:
        return None
    k = h // resolution
    return a.reshape(resolution, k, resolution, k, *a.shape[2:]).sum(axis=(1, 3), dtype=np.int64), k * k


def picture_at(im: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """A picture from the page -> x_0, (R, R, C) float32 in [-1, 1].

    The page shows a model's images enlarged k times (nearest), so such a
    picture comes back exactly (block means of identical pixels); any other
    is center-cropped and resized as uploads are (`images.load_image`).
    Alpha is dropped.
    """
    if im.mode in EIGHT_BIT:
        img = np.asarray(im)
        img = img[..., None] if img.ndim == 2 else img[..., : 1 if im.mode == "LA" else 3]
        blocks = _block_sums(img, resolution)
        if blocks is not None and not (blocks[0] % blocks[1]).any():  # every block mean a whole value
            small = blocks[0] // blocks[1]
            if channels == 1 and small.shape[-1] == 3:
                gray = (np.ptp(small, axis=-1) == 0).all()
                small = small[..., :1] if gray else None  # a color picture for a grayscale model: as uploads are
            elif channels == 3 and small.shape[-1] == 1:
                small = np.repeat(small, 3, axis=-1)
            if small is not None:
                return (small / 127.5 - 1.0).astype(np.float32)
    return load_image(im, resolution, channels)


def fill_mask(layers, size: tuple[int, int], resolution: int) -> np.ndarray:
    """The editor's paint layers (PIL images, one at a time: painted where alpha > 0,
    or where not black without alpha) -> (R, R) bool, True = fill. `size` is the picture's (h, w).

    Raises ValueError when nothing is painted or a layer's size is not the picture's.
    """
    painted = np.zeros(size, bool)
    for layer in layers:
        if (layer.height, layer.width) != size:
            raise ValueError(
                f"the mask is {layer.width}x{layer.height} but the picture "
                f"{size[1]}x{size[0]}: paint on the picture in the editor"
            )
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        painted |= np.asarray(alpha) > 0
    if not painted.any():
        raise ValueError("no mask painted: paint over the part to fill, then press Inpaint")
    blocks = _block_sums(painted, resolution)
    if blocks is not None:
        cover = blocks[0] / blocks[1]
    else:  # a picture of another size: the strokes resized as the picture is
        pil = Image.fromarray(painted.astype(np.uint8) * 255)
        cover = np.asarray(load_image(pil, resolution, 1))[..., 0] * 0.5 + 0.5
    mask = cover >= MIN_COVER
    if not mask.any():
        raise ValueError("the painted strokes cover no whole pixel of the model's image: paint a wider stroke")
    return mask
