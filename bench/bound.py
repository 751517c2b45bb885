"""Throughput of the variational bound beside the sampler's: one model, one batch, one process.

    python bench/bound.py                       # the bundled digits model, batch 64, held-out digits
    python bench/bound.py --model ema_cifar10 --data path/to/images --batch 128

Both make T UNet calls on the whole batch: the bound one per t (plus its KL
terms), a T-step chain one per step. After one call of each to compile, the
two are timed alternately `--repeats` times; the best time of each is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddpm_jax import Diffusion  # noqa: E402
from ddpm_jax.cpu_flags import use_cpu_flags  # noqa: E402
from ddpm_jax.evaluation import eval_images  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--data", default="digits", help="as `ddpm-jax eval bpd --data`")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    use_cpu_flags()  # before JAX starts its backend
    model = Diffusion.from_pretrained(args.model)
    h, _, c = model.image_shape
    images = eval_images(args.data, h, c)[: args.batch]
    n, T = len(images), model.num_timesteps

    def bound():
        model.bpd(images, key=0)

    def sample():
        model.denoise(n, key=0).block_until_ready()

    times = {"bound": [], "sample": []}
    for name, fn in (("bound", bound), ("sample", sample)):
        t0 = time.perf_counter()
        fn()
        print(f"{name}: first call (compiles) {time.perf_counter() - t0:.1f} s", flush=True)
    for _ in range(args.repeats):
        for name, fn in (("bound", bound), ("sample", sample)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tb, ts = min(times["bound"]), min(times["sample"])
    print(f"{args.model}, batch {n}, T = {T}, {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"bound:   {tb:.1f} s = {n / tb:.2f} images/s ({n * T / tb:.0f} UNet image-calls/s)")
    print(f"sampler: {ts:.1f} s = {T / ts:.1f} steps/s at batch {n} ({n * T / ts:.0f} UNet image-calls/s)")
    print(f"bound time / sampling time: {tb / ts:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
