"""`ddpm-jax interpolate`: a strip from picture A to picture B through x_t (Ho et al. 2020, Sec. 4.4).

A and B are encoded to x_t with the same noise, mixed for k lambdas evenly
spaced in [0, 1] and decoded with the reverse noise fixed across lambda;
the strip shows A, the k decodings, then B. Without --a and --b, the strip
runs between two fresh samples (0 and 1 of --seed) by spherical
interpolation of their x_T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import add_model, add_out, add_seed, load_model


def add_arguments(p):
    add_model(p)
    p.add_argument("--a", help="picture A (PNG/JPEG); omit --a and --b to blend two fresh samples")
    p.add_argument("--b", help="picture B (PNG/JPEG)")
    p.add_argument(
        "--t",
        type=int,
        default=None,
        help="forward steps to encode to, 1..T (default: T // 2, the paper's 500 of 1000)",
    )
    p.add_argument("--k", type=int, default=8, help="number of lambdas, evenly spaced in [0, 1]")
    add_seed(p)
    add_out(p, "the strip, a PNG file")


def run(args) -> int:
    from tqdm import tqdm

    from ..atomic import refuse_existing
    from ..checks import check_int
    from ..images import read_picture, save_grid

    if (args.a is None) != (args.b is None):
        raise ValueError("give both --a and --b (two pictures), or neither (two fresh samples)")
    k = check_int("--k", args.k, 1, 10**4)
    lambdas = np.linspace(0.0, 1.0, k) if k > 1 else np.zeros(1)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the strip's file name, e.g. {out / 'strip.png'}")
    refuse_existing([out])
    model = load_model(args.model, out.parent)
    if args.a is None:
        t, ends = model.num_timesteps, []
        chain = model.interpolate_noise_steps(lambdas, key=args.seed)
    else:
        t = model.num_timesteps // 2 if args.t is None else args.t
        h, _, c = model.image_shape
        ends = [read_picture(path, h, c, what) for path, what in ((args.a, "--a"), (args.b, "--b"))]
        chain = model.interpolate_steps(ends[0], ends[1], t, lambdas, key=args.seed)
    with tqdm(total=t, unit="step", desc=f"decoding {k} mixes") as bar:
        for item in chain:
            bar.update(t - item.step - bar.n)
    strip = model.to_uint8(item.x, clip=True)
    if ends:
        a, b = (model.to_uint8(end[None], clip=True) for end in ends)
        strip = np.concatenate([a, strip, b])
    path = save_grid(strip, out, ncol=len(strip))
    print(f"wrote the strip {path} ({len(strip)} pictures{', A and B at the ends' if ends else ''})")
    return 0
