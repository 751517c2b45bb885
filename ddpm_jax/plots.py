"""Line charts drawn with PIL (no plotting library needed), saved as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import save_png

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
MARGIN = (52, 14, 34, 34)  # left, right, top, bottom


class Series(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    label: str = ""
    points: bool = False  # markers only, no line


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Round tick values covering [lo, hi]: decades on a log axis, 1/2/5 steps otherwise."""
    if log:
        return [10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1)]
    raw = (hi - lo) / 5 or 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [k * step for k in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def _label(v: float) -> str:
    return f"{v:.0e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:g}"


def line_chart(
    series: Sequence[Series], *, title: str, xlabel: str, ylabel: str, log_y: bool = False, size=(480, 340)
) -> np.ndarray:
    """One chart of `series` (y against x) as an RGB uint8 array; on a log y axis
    the points with y <= 0 are left out."""
    w, h = size
    left, right, top, bottom = MARGIN
    pw, ph = w - left - right, h - top - bottom
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(11)
    kept = []
    for s in series:
        x, y = np.asarray(s.x, np.float64), np.asarray(s.y, np.float64)
        ok = np.isfinite(y) & (y > 0 if log_y else True)
        kept.append((x[ok], np.log10(y[ok]) if log_y else y[ok], s))
    xs = np.concatenate([k[0] for k in kept])
    ys = np.concatenate([k[1] for k in kept])
    xt, yt = _ticks(xs.min(), xs.max(), False), _ticks(ys.min(), ys.max(), log_y)
    x0, x1 = xt[0], xt[-1]
    y0, y1 = (math.log10(yt[0]), math.log10(yt[-1])) if log_y else (yt[0], yt[-1])

    def px(x, y):
        return left + pw * (x - x0) / ((x1 - x0) or 1), top + ph * (1 - (y - y0) / ((y1 - y0) or 1))

    d.rectangle([left, top, left + pw, top + ph], outline=(150, 150, 150))
    for v in xt:
        gx = px(v, y0)[0]
        d.line([(gx, top), (gx, top + ph)], fill=(235, 235, 235))
        d.text((gx, top + ph + 3), _label(v), fill="black", font=font, anchor="ma")
    for v in yt:
        gy = px(x0, math.log10(v) if log_y else v)[1]
        d.line([(left, gy), (left + pw, gy)], fill=(235, 235, 235))
        d.text((left - 4, gy), _label(v), fill="black", font=font, anchor="rm")
    for i, (x, y, s) in enumerate(kept):
        color = COLORS[i % len(COLORS)]
        pts = [px(a, b) for a, b in zip(x, y)]
        if not s.points and len(pts) > 1:
            d.line(pts, fill=color, width=2)
        if s.points:
            for a, b in pts:
                d.ellipse([a - 3, b - 3, a + 3, b + 3], fill=color)
        if s.label:
            d.text((left + pw - 6, top + 6 + 14 * i), s.label, fill=color, font=font, anchor="ra")
    d.text((w / 2, 3), title, fill="black", font=font, anchor="ma")
    d.text((4, top - 3), ylabel, fill="black", font=font, anchor="ld")
    d.text((left + pw / 2, h - 3), xlabel, fill="black", font=font, anchor="md")
    return np.asarray(img)


def save_charts(charts: Sequence[np.ndarray], path):
    """Charts side by side in one PNG, written atomically."""
    return save_png(np.concatenate(charts, axis=1), path)
