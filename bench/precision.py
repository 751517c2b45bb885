"""bfloat16 vs float32: time per step and how far a full chain's x_0 drifts.

Both chains start from the same x_T and draw the same noise (same seed);
only the UNet's precision differs (the step math stays float32).

    python bench/precision.py --model digits --n 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from ddpm_jax import Diffusion


def timed_chain(model, n, seed):
    model.denoise(n, n_steps=model.chunk_size, key=seed)  # compile
    t0 = time.perf_counter()
    x = np.asarray(model.denoise(n, key=seed))
    return x, (time.perf_counter() - t0) / model.num_timesteps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    f32 = Diffusion.from_pretrained(args.model, chunk_size=50)
    b16 = Diffusion(f32.diffusion_config, f32.unet_config, f32.params, chunk_size=50, dtype="bfloat16")
    runs = {"float32": [], "bfloat16": []}
    for _ in range(args.reps):
        for name, m in (("float32", f32), ("bfloat16", b16)):
            runs[name].append(timed_chain(m, args.n, args.seed))
    (x32, _), (x16, _) = runs["float32"][0], runs["bfloat16"][0]
    diff = np.abs(x16 - x32)
    u8 = np.abs(f32.to_uint8(x16, clip=True).astype(int) - f32.to_uint8(x32, clip=True).astype(int))
    print(f"model {args.model}, {args.n} samples, {f32.num_timesteps} steps, {jax.devices()[0].device_kind}")
    for name, rs in runs.items():
        print(f"  {name:9} {1000 * statistics.median(t for _, t in rs):8.2f} ms/step")
    print(f"  final x_0, bfloat16 vs float32: max |diff| {diff.max():.3f}, mean |diff| {diff.mean():.4f} "
          f"(images in [-1, 1]); uint8 pixels differing by > 8 levels: {100 * (u8 > 8).mean():.1f}%")


if __name__ == "__main__":
    main()
