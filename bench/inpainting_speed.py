"""The time of one RePaint inpainting (one image, n = 1) on this machine.

A preset with random weights (`--preset cifar10`, `lsun`, `digits`) or a
model by name or path (`--model digits`); the image is random, the mask
keeps its upper half. Reports the first chunk (compilation included), the
rest, and the time per model call (a REVERSE row of the schedule).

    python bench/inpainting_speed.py --model digits                  # the paper's 250:10:10
    python bench/inpainting_speed.py --preset cifar10 --settings 250:10:1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from inpainting_quality import parse_setting


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a preset of config.py with random weights")
    src.add_argument("--model", help="a bundled or pretrained name, or a .safetensors path")
    p.add_argument(
        "--settings",
        type=parse_setting,
        default=(250, 10, 10),
        help="steps:jump_length:jump_n_sample (default: the paper's 250:10:10)",
    )
    p.add_argument("--chunk-size", type=int, default=50)
    args = p.parse_args(argv)

    from ddpm_jax.cpu_flags import use_cpu_flags

    use_cpu_flags()  # before JAX starts its backend
    import jax

    from ddpm_jax import DIFFUSION_PRESETS, UNET_PRESETS, Diffusion
    from ddpm_jax.inpainting import REVERSE, jump_schedule
    from ddpm_jax.unet import init_params

    if args.preset:
        ucfg = UNET_PRESETS[args.preset]
        model = Diffusion(
            diffusion_config=DIFFUSION_PRESETS[args.preset],
            unet_config=ucfg,
            params=init_params(ucfg, jax.random.key(0)),
            chunk_size=args.chunk_size,
        )
    else:
        model = Diffusion.from_pretrained(args.model, chunk_size=args.chunk_size)
    h, w, c = model.image_shape
    image = np.random.default_rng(0).uniform(-1, 1, (h, w, c)).astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    mask[: h // 2] = 1
    steps, jump_length, jump_n_sample = args.settings
    schedule = jump_schedule(steps, jump_length, jump_n_sample)
    calls = int((schedule[:, 1] == REVERSE).sum())
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    marks = []
    for item in model.inpaint_steps(
        image, mask, 1, key=0, steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample
    ):
        item.x.block_until_ready()
        marks.append(time.perf_counter() - t0)
        if len(marks) % 10 == 0:
            print(
                f"  {min(len(marks) * args.chunk_size, len(schedule))}/{len(schedule)} iterations ({marks[-1]:.0f} s)",
                file=sys.stderr,
            )
    first, total = marks[0], marks[-1]
    rest_calls = calls - int((schedule[: args.chunk_size, 1] == REVERSE).sum())
    print(
        f"{args.preset or args.model} ({h}x{w}x{c}), RePaint {steps}:{jump_length}:{jump_n_sample}: "
        f"{len(schedule)} iterations, {calls} model calls, chunks of {args.chunk_size}"
    )
    print(
        f"first chunk (compiling included) {first:.1f} s; the rest {total - first:.1f} s "
        f"({(total - first) / max(rest_calls, 1) * 1e3:.1f} ms per model call); total {total:.1f} s"
    )
    print(f"1-min load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
