"""What the page shows: sample grids at display size, the schedule plot, GIFs,
and uploaded pictures turned into x_0. Pure functions of numpy arrays.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ddpm_jax.atomic import write_with
from ddpm_jax.images import make_grid, to_uint8

DISPLAY_SIZE = 256  # small models are upscaled (nearest) to at least this


def display_scale(resolution: int, target: int = DISPLAY_SIZE) -> int:
    """Integer nearest-neighbour factor that brings `resolution` up to ~target."""
    return max(1, target // resolution)


def grid(x, ncol: int | None = None) -> np.ndarray:
    """(n, H, W, C) floats in [-1, 1] -> one HWC uint8 image, clamped.

    One sample is returned as is; several are tiled `ncol` per row
    (default: a near-square grid) with a 2-pixel black border.
    """
    imgs = to_uint8(x, clip=True)
    return imgs[0] if len(imgs) == 1 else make_grid(imgs, ncol)


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an HWC image by an integer factor."""
    if scale == 1:
        return img
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def for_display(img: np.ndarray) -> np.ndarray:
    """HWC uint8 -> HW for one channel (PIL's grayscale) or HWC for RGB."""
    return img[..., 0] if img.shape[-1] == 1 else img


def alphas_cumprod_at(abar: np.ndarray, step: int) -> float:
    """abar of x after `step` forward steps (1 for step 0, eq. 4)."""
    return 1.0 if step == 0 else float(abar[step - 1])


def schedule_plot(abar: np.ndarray, step: int, size=(360, 170)) -> np.ndarray:
    """alpha-bar_t against t (eq. 4) with the current step marked; RGB uint8."""
    w, h = size
    left, right, top, bottom = 34, 10, 10, 34
    pw, ph = w - left - right, h - top - bottom
    T = len(abar)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(11)

    def xy(t, v):
        return left + pw * t / T, top + ph * (1.0 - v)

    d.rectangle([left, top, left + pw, top + ph], outline=(160, 160, 160))
    for v in (0.0, 0.5, 1.0):
        d.text((left - 4, xy(0, v)[1]), f"{v:g}", fill="black", font=font, anchor="rm")
    for t in (0, T // 2, T):
        d.text((xy(t, 0)[0], top + ph + 3), str(t), fill="black", font=font, anchor="ma")
    curve = [xy(0, 1.0)] + [xy(t + 1, float(a)) for t, a in enumerate(abar)]
    d.line(curve, fill=(31, 119, 180), width=2)
    a = alphas_cumprod_at(abar, step)
    x, y = xy(step, a)
    d.line([(x, top), (x, top + ph)], fill=(214, 39, 40), width=1)
    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(214, 39, 40))
    snr = "inf" if a >= 1.0 else f"{a / max(1.0 - a, 1e-30):.3g}"
    d.text(
        (left + pw / 2, h - 2),
        f"alpha-bar vs t   step {step}: alpha-bar={a:.3g}, SNR={snr}",
        fill="black",
        font=font,
        anchor="md",
    )
    return np.asarray(img)


def progress_bar(done: int, total: int, label: str, unit: str = "steps") -> str:
    """A chain's progress as HTML: a bar and "done / total steps" (or another unit)."""
    pct = 100.0 * done / max(total, 1)
    return (
        f'<div class="ddpm-bar"><div style="width:{pct:.1f}%"></div></div>'
        f'<span class="ddpm-bar-text">{html.escape(label)} {done} / {total} {unit}</span>'
    )


def gif_frames(frames: list[np.ndarray], max_side: int, budget_bytes: int, max_frames: int):
    """(frames, scale) for a GIF: each frame enlarged (nearest) toward `max_side`,
    and evenly spaced frames (first and last kept) so that the enlarged frames
    together hold at most `budget_bytes` and number at most `max_frames`."""
    h, w, c = frames[0].shape
    scale = max(1, max_side // max(h, w))
    per_frame = h * w * (1 if c == 1 else 3) * scale**2
    while scale > 1 and per_frame > budget_bytes // 2:  # at least two frames fit
        scale -= 1
        per_frame = h * w * (1 if c == 1 else 3) * scale**2
    keep = max(2, min(max_frames, budget_bytes // per_frame, len(frames)))
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, keep)).astype(int))
    return [frames[i] for i in idx], scale


def write_gif(frames: list[np.ndarray], path, scale: int = 1, fps: float = 12.0, hold_last_s: float = 1.5) -> Path:
    """Animated GIF of HWC uint8 frames (upscaled by `scale`), looping, written atomically."""
    if not frames:
        raise ValueError("no frames to write: run a chain first")
    pics = [Image.fromarray(for_display(upscale(f, scale))) for f in frames]
    frame_ms = round(1000 / fps)
    durations = [frame_ms] * (len(pics) - 1) + [max(frame_ms, round(1000 * hold_last_s))]
    return write_with(
        path, lambda f: pics[0].save(f, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0)
    )
