"""Images: [-1, 1] float NHWC <-> uint8, PNG files and grids, and the one
loader that reads any image file to [-1, 1] by its real bit depth."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .atomic import write_with


def to_uint8(x, clip: bool = False) -> np.ndarray:
    """NHWC floats in [-1, 1] -> NHWC uint8 via (x + 1) * 127.5, rounded.

    With `clip`, values are clamped to [-1, 1] first; without it, values out
    of range raise (the port's cast wrapped them around silently). NaN or
    infinite values raise either way: they come from a chain that diverged,
    and would otherwise be written as black pixels.
    """
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.unique(np.nonzero(bad.reshape(len(x), -1) if x.ndim == 4 else bad.reshape(1, -1))[0])
        raise ValueError(
            f"x holds {int(bad.sum())} NaN or infinite values (in image(s) {where[:8].tolist()}"
            f"{', ...' if len(where) > 8 else ''}): the chain diverged, and no picture is made of them; "
            "check the model's weights and precision (precision='float32')"
        )
    if clip:
        x = np.clip(x, -1.0, 1.0)
    y = np.rint((x + 1.0) * 127.5)
    if not clip and (y.min() < 0 or y.max() > 255):
        raise ValueError(
            f"x has values in [{x.min():.3f}, {x.max():.3f}], outside [-1, 1]; pass clip=True to clamp them"
        )
    return y.astype(np.uint8)


def _pil(img: np.ndarray) -> Image.Image:
    """One HWC uint8 image; a single channel is saved as grayscale."""
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def save_png(img: np.ndarray, path) -> Path:
    """One HWC uint8 image as a PNG, written atomically."""
    return write_with(path, lambda f: _pil(img).save(f, format="PNG"))


def image_paths(pattern: str, n: int, start_idx: int = 0) -> list[Path]:
    """pattern.format(start_idx + i) for i < n; ValueError unless they are n
    different files (a pattern without a placeholder names one file)."""
    try:
        paths = [Path(pattern.format(start_idx + i)) for i in range(n)]
    except (IndexError, KeyError, ValueError) as err:
        raise ValueError(f"bad file name pattern {pattern!r} ({err!r}); use e.g. 'out/{{:03}}.png'") from None
    seen = {}
    for i, path in enumerate(paths):
        first = seen.setdefault(os.path.normpath(os.path.abspath(path)), i)
        if first != i:
            raise ValueError(
                f"pattern {pattern!r} names {path} for images {first} and {i}: {n} images need "
                "a placeholder for their index, e.g. 'out/{:03}.png'"
            )
    return paths


def save_images(images: np.ndarray, pattern: str, start_idx: int = 0) -> list[Path]:
    """Write NHWC uint8 images to pattern.format(start_idx + i); returns paths.

    The names are checked first (`image_paths`), so no file of this call
    overwrites another; nothing is written when they collide.
    """
    paths = image_paths(pattern, len(images), start_idx)
    return [save_png(img, path) for img, path in zip(images, paths)]


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


# Modes whose values are not 8-bit; every other mode goes through Pillow's
# conversion to 8-bit "L" or "RGB" (alpha dropped, as torchvision's and
# diffusers' loaders do).
GRAY_MODES = ("1", "L", "LA", "La", "I", "F")


def _full_scale(im: Image.Image) -> float | None:
    """The value of white for high-depth modes (None for 8-bit ones): 65535 for
    I;16 and its variants; for I, 2**16 - 1 from a PNG (PNG has no deeper
    gray), 2**BitsPerSample - 1 from a TIFF, else 2**31 - 1; 1.0 for F."""
    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode == "I":
        bits = 16 if im.format == "PNG" else getattr(im, "tag_v2", {}).get(258, 31)
        bits = bits[0] if isinstance(bits, tuple) else bits
        return float(2 ** min(int(bits), 31) - 1)
    if im.mode == "F":
        return 1.0
    return None


def _unit_plane(im: Image.Image, scale: float, name: str) -> Image.Image:
    """A high-depth image as one float "F" plane in [0, 1]; out-of-range values raise."""
    a = np.asarray(im)
    lo, hi = (a.min().item(), a.max().item()) if a.size else (0, 0)  # in the image's own type
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > scale:
        raise ValueError(
            f"{name}: a mode {im.mode} image with values in [{lo:g}, {hi:g}]; expected [0, {scale:g}] for this mode"
        )
    return Image.fromarray((a / scale).astype(np.float32), mode="F")


def _square(im: Image.Image, resolution: int | None) -> Image.Image:
    """The central square, resized to resolution x resolution (bicubic)."""
    if resolution is None:
        return im
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im if s == resolution else im.resize((resolution, resolution), Image.Resampling.BICUBIC)


def open_image(source) -> Image.Image:
    """A path or file object -> a decoded PIL image, upright (EXIF orientation).

    Raises ValueError for a decompression bomb (more than
    `PIL.Image.MAX_IMAGE_PIXELS` pixels), OSError for what is not an image or
    is truncated.
    """
    name = getattr(source, "name", source)
    limit = Image.MAX_IMAGE_PIXELS or math.inf
    try:
        im = Image.open(source)  # reads the header only; raises above 2 x the limit
        with _closed_on_error(im):
            if im.width * im.height > limit:  # Pillow only warns between 1 and 2 x the limit
                raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels")
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # keeps im.format, which `_full_scale` reads
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{name}: refusing a possible decompression bomb ({err}; the limit is "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels)"
        ) from None
    return im


@contextmanager
def _closed_on_error(im: Image.Image):
    try:
        yield im
    except BaseException:
        im.close()
        raise


def load_image(source, resolution: int | None = None, channels: int | None = None) -> np.ndarray:
    """An image -> HWC float32 in [-1, 1], black -1 and white 1 at its real bit depth.

    `source` is a path, a file object or a PIL image, of any mode Pillow
    reads: 1, L, LA, P, RGB, RGBA, CMYK, YCbCr, I;16 (and I;16B/L/N), I, F
    (floats in [0, 1]). With `resolution` the central square is resized to
    it (bicubic); `channels` 1 gives luma (ITU-R 601-2, Pillow's "L"), 3
    gives RGB (gray repeated), None keeps the image's own (1 or 3).
    Raises ValueError for values its mode cannot hold and for decompression
    bombs, OSError for files that are not images.
    """
    if not isinstance(source, Image.Image):
        with open_image(source) as im:
            return load_image(im, resolution, channels)
    im, name = source, getattr(source, "filename", "") or "image"
    gray = im.mode in GRAY_MODES or im.mode.startswith("I;16")
    channels = channels or (1 if gray else 3)
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}; expected 1 (grayscale) or 3 (RGB)")
    scale = _full_scale(im)
    if scale is None:  # 8-bit: resized as uint8, as the training data always was
        arr = np.asarray(_square(im.convert("L" if channels == 1 else "RGB"), resolution), np.uint8)
        x = arr.astype(np.float32) / 127.5 - 1.0
    else:
        plane = np.asarray(_square(_unit_plane(im, scale, name), resolution), np.float32)
        x = np.clip(plane, 0.0, 1.0) * 2.0 - 1.0
    x = x[..., None] if x.ndim == 2 else x
    return np.repeat(x, channels, axis=-1) if x.shape[-1] != channels else x


def read_picture(path, resolution: int, channels: int, what: str) -> np.ndarray:
    """A picture file at a model's resolution: HWC float32 in [-1, 1] (`load_image`); errors
    name it as `what` (e.g. a flag): FileNotFoundError when missing, ValueError when unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        return load_image(path, resolution, channels)
    except OSError as err:
        raise ValueError(f"{what} {path} is not a readable picture ({err})") from err
