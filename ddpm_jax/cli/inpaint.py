"""`ddpm-jax inpaint`: fill the black part of a mask in a picture (RePaint), K completions and a grid.

The picture and the mask are center-cropped and resized to the model's
resolution as training pictures are (`data.py`); the mask is then
thresholded: white (at least mid-gray) keeps a pixel, black fills it (`--invert-mask`
swaps them). Writes {out}/{i:03}.png per completion and {out}/grid.png: the
picture, the picture with the filled part gray, then the completions.
Completion i depends only on (seed, i).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import add_model, add_out, add_seed, load_model


def add_arguments(p):
    add_model(p)
    p.add_argument("--image", required=True, help="the picture to inpaint (PNG/JPEG)")
    p.add_argument("--mask", required=True, help="a picture of the mask: white keeps, black is filled")
    p.add_argument("--invert-mask", action="store_true", help="black keeps, white is filled")
    add_out(p)
    p.add_argument("--n", type=int, default=4, help="number of completions")
    add_seed(p)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="the process respaced to this many steps (default: 250, the paper's, or T if smaller)",
    )
    p.add_argument("--jump-length", type=int, default=10, help="RePaint's jump length j")
    p.add_argument(
        "--jump-n-sample",
        type=int,
        default=10,
        help="RePaint's resamplings r; 1 is the replacement method (no jumps, r times cheaper)",
    )


def run(args) -> int:
    from tqdm import tqdm

    from ..atomic import refuse_existing
    from ..checks import check_int
    from ..images import read_picture, save_grid, save_images
    from ..inpainting import default_steps, schedule_length

    out = Path(args.out)
    n = check_int("--n", args.n, 1, 10**5)
    refuse_existing([out / f"{i:03}.png" for i in range(n)] + [out / "grid.png"])
    model = load_model(args.model, args.out)
    shape = model.image_shape
    picture = read_picture(args.image, shape[0], shape[-1], "--image")
    mask = read_picture(args.mask, shape[0], 1, "--mask") >= 0.0  # white (kept) vs black (filled)
    if args.invert_mask:
        mask = ~mask
    steps = default_steps(model.diffusion_config.num_diffusion_timesteps) if args.steps is None else args.steps
    chain = model.inpaint_steps(
        picture,
        mask,
        args.n,
        key=args.seed,
        steps=steps,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
    )
    total = schedule_length(steps, args.jump_length, args.jump_n_sample)
    with tqdm(total=total, unit="it", desc=f"inpainting {args.n}") as bar:
        for step in chain:
            bar.update(min(model.chunk_size, total - bar.n))
            last = step
    completions = model.to_uint8(last.x, clip=True)
    save_images(completions, str(out / "{:03}.png"))
    picture = model.to_uint8(picture[None], clip=True)
    shown = np.where(mask, picture, 128).astype(np.uint8)
    grid = save_grid(np.concatenate([picture, shown, completions]), out / "grid.png")
    print(f"wrote {args.n} completions to {out} and the grid {grid} (picture, masked, completions)")
    return 0
