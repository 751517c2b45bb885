"""Inpainting quality on a digits model: does the completion keep the digit's class?

The lower half (rows 8-15 of 16) of held-out digits is masked and filled by
RePaint (Lugmayr et al. 2022) with each setting of --settings; the classifier
of bench/digits_quality.py (an MLP trained on the training split) judges the
completed digits, area-averaged to 8x8 as there. The class-kept rate is the
fraction it assigns the digit's true label, with a 95% interval
(Wilson). For scale, the same rate for the unmasked digits, for the lower
half filled with uniform noise in [-1, 1], and with the background (-1).
Every row judges the same first --n held-out digits.

    python bench/inpainting_quality.py                          # 150 digits, paper and replacement settings
    python bench/inpainting_quality.py --n 450 --settings 250:1:1 --pictures docs/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from digits_quality import train_classifier

RESOLUTION = 16
Z95 = 1.96


def parse_setting(spec: str) -> tuple[int, int, int]:
    """'steps:jump_length:jump_n_sample' -> three ints."""
    try:
        steps, jump_length, jump_n_sample = (int(v) for v in spec.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected steps:jump_length:jump_n_sample, e.g. 250:10:10") from err
    return steps, jump_length, jump_n_sample


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate k / n."""
    p, z2 = k / n, Z95**2
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return mid - half, mid + half


def lower_half_mask() -> np.ndarray:
    """1 keeps (the upper half), 0 fills (the lower half), (16, 16)."""
    mask = np.zeros((RESOLUTION, RESOLUTION), np.float32)
    mask[: RESOLUTION // 2] = 1
    return mask


def inpaint_all(model, images, mask, setting, seed, batch):
    """Each image's lower half filled once (completion i is sample i of `seed`); and seconds."""
    steps, jump_length, jump_n_sample = setting
    t0, out = time.perf_counter(), []
    for first in range(0, len(images), batch):
        part = images[first : first + batch]
        out.append(
            np.asarray(
                model.inpaint(
                    part,
                    mask,
                    key=seed,
                    first_index=first,
                    steps=steps,
                    jump_length=jump_length,
                    jump_n_sample=jump_n_sample,
                )
            )
        )
        print(
            f"  {steps}:{jump_length}:{jump_n_sample} inpainted {first + len(part)}/{len(images)} "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    return np.concatenate(out), time.perf_counter() - t0


def write_pictures(folder, model, images, mask, rows, seed, scale=4):
    """An example grid (original, masked, each setting's completion; 8 digits) and
    interpolation strips between the first two digits, one row per t in T/10,
    3T/10, T/2 (digit a, 8 lambdas, digit b), both `scale`x nearest."""
    from PIL import Image

    from ddpm_jax.images import make_grid, save_png, to_uint8

    def upscaled(grid):
        return np.asarray(
            Image.fromarray(grid[..., 0]).resize(
                (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
            )
        )[..., None]

    k = 8
    masked = np.where(mask[..., None] > 0, images[:k], 0.0)
    tiles = np.concatenate([images[:k], masked, *(completed[:k] for _, completed in rows)])
    grid = save_png(upscaled(make_grid(to_uint8(tiles, clip=True), ncol=k)), Path(folder) / "inpainting_digits.png")
    ts = [model.num_timesteps * tenths // 10 for tenths in (1, 3, 5)]
    strips = [
        np.concatenate(
            [
                images[:1],
                np.asarray(model.interpolate(images[0], images[1], t, np.linspace(0, 1, k), key=seed)),
                images[1:2],
            ]
        )
        for t in ts
    ]
    path = save_png(
        upscaled(make_grid(to_uint8(np.concatenate(strips), clip=True), ncol=k + 2)),
        Path(folder) / "interpolation_digits.png",
    )
    print(
        f"wrote {grid} (rows: digit, masked, {', '.join(name for name, _ in rows)}) and {path} "
        f"(rows: t = {', '.join(map(str, ts))}; digit a, {k} lambdas in [0, 1], digit b)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="digits", help="bundled name or .safetensors path (16x16 grayscale)")
    p.add_argument("--n", type=int, default=150, help="held-out digits to inpaint (the first n; 450 in all)")
    p.add_argument(
        "--settings",
        type=parse_setting,
        nargs="+",
        default=[(250, 10, 10), (250, 10, 1)],
        help="RePaint settings steps:jump_length:jump_n_sample (jump_n_sample 1: replacement)",
    )
    p.add_argument("--batch", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=50, help="schedule iterations per compiled chunk")
    p.add_argument("--pictures", help="also write an example grid and an interpolation strip to this folder")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    from ddpm_jax import Diffusion
    from ddpm_jax.data import digits_split, digits_to_images, images_to_digits
    from ddpm_jax.inpainting import REVERSE, jump_schedule

    x_tr, y_tr, x_te, y_te = digits_split()
    clf = train_classifier(images_to_digits(digits_to_images(x_tr, RESOLUTION)), y_tr)
    images, labels = digits_to_images(x_te[: args.n], RESOLUTION), y_te[: args.n]
    mask = lower_half_mask()
    model = Diffusion.from_pretrained(args.model, chunk_size=args.chunk_size)
    if model.image_shape != (RESOLUTION, RESOLUTION, 1):
        raise SystemExit(f"{args.model} makes {model.image_shape} images; this benchmark needs 16x16 grayscale")

    def kept(x) -> dict:
        hits = int((clf.predict(images_to_digits(x).reshape(len(x), -1) / 16.0) == labels).sum())
        lo, hi = wilson(hits, len(x))
        return {"class_kept": hits / len(x), "ci95": [round(lo, 4), round(hi, 4)]}

    fill = np.random.default_rng(args.seed).uniform(-1, 1, images.shape).astype(np.float32)
    keep = mask[..., None] > 0
    results = {
        "unmasked real digits": kept(images),
        "lower half: uniform noise": kept(np.where(keep, images, fill)),
        "lower half: background (-1)": kept(np.where(keep, images, -1.0)),
    }
    rows = []
    for setting in args.settings:
        completed, seconds = inpaint_all(model, images, mask, setting, args.seed, args.batch)
        schedule = jump_schedule(*setting)
        name = ("RePaint {}:{}:{}" if setting[2] > 1 else "replacement {}:{}:{}").format(*setting)
        results[name] = {
            **kept(completed),
            "seconds": round(seconds, 1),
            "iterations": len(schedule),
            "model_calls_per_digit": int((schedule[:, 1] == REVERSE).sum()),
        }
        rows.append((name, completed))

    print(f"{args.n} held-out digits, lower half masked; class kept under the MLP of digits_quality.py")
    print(f"{'':34}{'class kept':>11}  {'95% CI':>15}  {'model calls':>11}  {'time':>7}")
    for name, r in results.items():
        calls = r.get("model_calls_per_digit", "")
        secs = f"{r['seconds']:.0f} s" if "seconds" in r else ""
        print(f"{name:34}{r['class_kept']:11.3f}  [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  {calls:>11}  {secs:>7}")
    if args.pictures:
        write_pictures(args.pictures, model, images, mask, rows, args.seed)
    if args.json:
        from ddpm_jax.atomic import write_json

        write_json(args.json, {"model": args.model, "n": args.n, "seed": args.seed, "results": results}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
