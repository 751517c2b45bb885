"""`ddpm-jax sample`: denoise fresh noise into one PNG per sample and a grid."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = None  # the bundled model's name, once one ships


def add_arguments(p):
    p.add_argument("--model", default=DEFAULT_MODEL, required=DEFAULT_MODEL is None,
                   help="a bundled or pretrained name, or a .safetensors path")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="reverse steps to run from x_T (default: all T)")
    p.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    from tqdm import tqdm

    from .images import save_grid, save_images
    from .pipeline import Diffusion

    model = Diffusion.from_pretrained(args.model)
    T = model.num_timesteps
    chain = model.denoise_steps(args.n, n_steps=args.steps, key=args.seed)  # validates
    with tqdm(total=args.steps or T, unit="step", desc=f"sampling {args.n}") as bar:
        for x, step, _ in chain:
            bar.update(T - step - bar.n)
    out = Path(args.out)
    imgs = model.to_uint8(x, clip=True)
    paths = save_images(imgs, str(out / "{:05}.png"))
    grid = save_grid(imgs, out / "grid.png")
    print(f"wrote {len(paths)} images to {out} and the grid {grid}")
    return 0
