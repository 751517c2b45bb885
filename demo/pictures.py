"""Pictures a client sends, opened within a bound on their pixels.

A file's pixel count is read from its header before anything is decoded, so a
small file that unpacks to a huge image (a PNG of 8000x8000 pixels can be 200 KB)
is refused at once, on every path that takes a picture: the upload that becomes
x_0, either end of an interpolation, the editor's picture and its paint layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpm_jax.images import load_image, open_image

from .state import InvalidInput

MAX_SIDE = 4096
MAX_PICTURE_PIXELS = MAX_SIDE * MAX_SIDE  # 16.8 M: a 12 MP phone photo fits


def open_picture(path, what: str) -> Image.Image:
    """The picture at `path` (what an `inputs.picture_file` hands over: an uploaded file's
    path, None, or an `InvalidInput`), decoded and upright.

    Raises ValueError naming `what` when there is none, it is not an image Pillow
    reads or has more than MAX_PICTURE_PIXELS pixels (checked from the header, before decoding).
    """
    if isinstance(path, InvalidInput):
        raise ValueError(path)
    if path is None:
        raise ValueError(f"{what} is missing: upload one first")
    if not isinstance(path, (str, Path)):
        raise ValueError(f"{what} must be an uploaded file, got {type(path).__name__}")
    too_big = f"the page takes at most {MAX_PICTURE_PIXELS:,} pixels ({MAX_SIDE}x{MAX_SIDE}): send a smaller picture"
    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
        if w * h > MAX_PICTURE_PIXELS:
            raise ValueError(f"{what} is {w}x{h} pixels; {too_big}")
        return open_image(path)
    except Image.DecompressionBombError as err:  # over twice Pillow's own limit: Image.open refuses it
        raise ValueError(f"{what} has too many pixels ({err}); {too_big}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{what} is not an image file Pillow reads (cannot identify image file)") from None
    except OSError as err:
        raise ValueError(f"{what} could not be read ({err})") from None


def load_picture(path, resolution: int, channels: int, what: str) -> np.ndarray:
    """The picture at `path` as x_0, (R, R, C) float32 in [-1, 1] (`images.load_image`), within the bound."""
    return load_image(open_picture(path, what), resolution, channels)
