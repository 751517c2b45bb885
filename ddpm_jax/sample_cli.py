"""`ddpm-jax sample`: denoise fresh noise into one PNG per sample and a grid.

Sample i is written to {out}/{i:05}.png and depends only on (seed, i): batches
whose files all exist are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

DEFAULT_MODEL = None  # the bundled model's name, once one ships


def add_arguments(p):
    p.add_argument("--model", default=DEFAULT_MODEL, required=DEFAULT_MODEL is None,
                   help="a bundled or pretrained name, or a .safetensors path")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps, respaced evenly over T (default: all T)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                   help="ddpm: Alg. 2 (strided when --steps < T); ddim: Song et al. eq. 12")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM's eta (0: deterministic)")
    p.add_argument("--batch", type=int, default=64, help="samples per batch")
    p.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from .images import save_grid, save_images
    from .pipeline import Diffusion, _check_int

    n = _check_int("--n", args.n, 1, 10**9)
    batch = _check_int("--batch", args.batch, 1, 10**6)
    model = Diffusion.from_pretrained(args.model)
    if args.steps is not None or args.sampler != "ddpm":
        model = model.respaced(args.steps or model.num_timesteps, args.sampler, args.eta)
    T = model.num_timesteps
    out = Path(args.out)
    pattern = str(out / "{:05}.png")
    for start in range(0, n, batch):
        count = min(batch, n - start)
        if all(Path(pattern.format(i)).exists() for i in range(start, start + count)):
            continue
        chain = model.denoise_steps(count, key=args.seed, first_index=start)
        desc = f"samples {start}-{start + count - 1} of {n}"
        with tqdm(total=T, unit="step", desc=desc) as bar:
            for x, step, _ in chain:
                bar.update(T - step - bar.n)
        save_images(model.to_uint8(x, clip=True), pattern, start_idx=start)
    shown = [np.asarray(Image.open(pattern.format(i))) for i in range(min(n, 64))]
    grid = save_grid(np.stack([a.reshape(*a.shape[:2], -1) for a in shown]), out / "grid.png")
    print(f"wrote {n} images to {out} and the grid {grid}")
    return 0
