"""Time to 16 pictures: a distilled model in its own few steps beside its teacher with
DPM-Solver++(2M) and DDIM, in one run.

For each chain: `ddpm-jax sample --n 16` in fresh processes sharing one JAX compilation cache,
empty for the first (cold) and filled for the rest (warm); then, in this process, the compiled
chain of 16 pictures alone (after one call that compiles it), median over repeats.

    python bench/few_steps.py                                   # digits_4step (4) vs digits: DPM-Solver++ 10, DDIM 50
    python bench/few_steps.py --distilled runs/distil/distilled.safetensors --teacher digits
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from first_sample import fmt, timed
from sampling import cpu_model


def chains(distilled: str, teacher: str) -> list[tuple[str, str, str | None, int | None]]:
    """(label, model, sampler, steps): None, None is the model's own chain."""
    return [
        ("distilled, own chain", distilled, None, None),
        ("DPM-Solver++(2M), 10 steps", teacher, "dpmpp_2m", 10),
        ("DDIM (eta 0), 50 steps", teacher, "ddim", 50),
    ]


def chain_seconds(model: str, sampler, steps, n: int, repeats: int) -> tuple[int, float]:
    """(UNet calls, median seconds) of the compiled chain of n pictures, in this process."""
    from ddpm_jax import Diffusion

    diffusion = Diffusion.from_pretrained(model, sampler=sampler, steps=steps, chunk_size=64)
    diffusion.denoise(n, key=0).block_until_ready()  # compiles
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        diffusion.denoise(n, key=i).block_until_ready()
        times.append(time.perf_counter() - t0)
    return diffusion.num_timesteps, statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--distilled", default="digits_4step", help="the distilled model (name or .safetensors)")
    p.add_argument("--teacher", default="digits", help="the model it was distilled from")
    p.add_argument("--n", type=int, default=16, help="pictures")
    p.add_argument("--runs", type=int, default=3, help="warm processes after the cold one")
    p.add_argument("--repeats", type=int, default=5, help="timed chains in this process")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, (label, model, sampler, steps) in enumerate(chains(args.distilled, args.teacher)):
            env = dict(os.environ, DDPM_JAX_CACHE=str(tmp / f"cache{i}"))
            cli = [sys.executable, "-m", "ddpm_jax.cli", "sample", "--model", model, "--n", str(args.n)]
            cli += ["--batch", str(args.n)]
            cli += [] if sampler is None else ["--sampler", sampler, "--steps", str(steps)]
            wall = [timed([*cli, "--out", tmp / f"out{i}-{r}"], env)[0] for r in range(1 + args.runs)]
            calls, chain = chain_seconds(model, sampler, steps, args.n, args.repeats)
            rows.append((label, model, calls, chain, wall))
    print(f"time to {args.n} pictures: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    base = rows[0]
    print(f"{'chain':30}{'model':22}{'UNet calls':>11}{'chain s':>9}{'x':>6}{'cold s':>8}{'warm s':>8}{'x':>6}")
    for label, model, calls, chain, wall in rows:
        warm = statistics.median(wall[1:])
        print(
            f"{label:30}{Path(model).name[:21]:22}{calls:>11}{chain:9.3f}{chain / base[3]:6.1f}"
            f"{wall[0]:8.2f}{warm:8.2f}{warm / statistics.median(base[4][1:]):6.1f}"
        )
    print("chain s: the compiled chain alone, median of", args.repeats, "(x: over the first row)")
    print("cold / warm s: a fresh `ddpm-jax sample` process to PNGs on disk, empty / filled compilation cache")
    for label, _, _, _, wall in rows:
        print(f"  {label}: cold {wall[0]:.2f} s; warm {fmt(wall[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
