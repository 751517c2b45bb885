"""Throughput of sharded sampling (and data-parallel training) on 1, 2, ... devices.

Each device count runs in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=N (on a CPU the "devices"
share its cores; on a GPU machine pass --real-devices to use the real ones).

    python bench/scaling.py --model digits --batch 64 --steps 20
    python bench/scaling.py --train --batch 64 --steps 20     # train steps of --model (digits)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _sampling(args, mesh):
    import jax

    from ddpm_jax import Diffusion

    m = Diffusion.from_pretrained(args.model, chunk_size=args.steps, mesh=mesh)
    return lambda rep: jax.block_until_ready(m.denoise(args.batch, n_steps=args.steps, key=rep))


def _training(args, mesh):
    """Train steps of --model's UNet and process (digits' training settings, digits data)."""
    import dataclasses

    import jax

    from ddpm_jax import Diffusion
    from ddpm_jax.data import load_digits_images
    from ddpm_jax.train import TRAIN_PRESETS
    from ddpm_jax.trainer import Trainer

    m = Diffusion.from_pretrained(args.model)
    ucfg, tcfg = m.unet_config, dataclasses.replace(TRAIN_PRESETS["digits"], batch_size=args.batch)
    data = load_digits_images(ucfg.resolution, ucfg.in_channels)
    trainer = Trainer(data, unet_config=ucfg, diffusion_config=m.diffusion_config, train_config=tcfg, mesh=mesh)
    return lambda rep: jax.block_until_ready(trainer.train(args.steps))


def worker(args):
    import jax

    from ddpm_jax.sharding import data_mesh

    mesh = data_mesh() if jax.local_device_count() > 1 else None
    run = (_training if args.train else _sampling)(args, mesh)
    run(0)  # compile + warm-up
    times = []
    for rep in range(args.reps):
        t0 = time.perf_counter()
        run(rep + 1)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(
        "RESULT "
        + json.dumps(
            dict(
                devices=jax.local_device_count(),
                per_s=args.batch * args.steps / t,
                spread=(max(times) - min(times)) / t,
            )
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--devices", default="1,2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--train", action="store_true", help="time train steps of --model's UNet instead")
    p.add_argument("--real-devices", action="store_true", help="use the machine's devices, not forced CPU ones")
    p.add_argument("--worker", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for n in map(int, args.devices.split(",")):
        env = dict(os.environ)
        if not args.real_devices:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--reps",
            str(args.reps),
        ] + (["--train"] if args.train else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[-1][7:]))
    base = rows[0]["per_s"]
    what = f"training {args.model}" if args.train else f"sampling {args.model}"
    unit = "images/s" if args.train else "sample-steps/s"
    print(f"{what}, batch {args.batch}, {args.steps} steps a rep, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'devices':>7} {unit:>15} {'spread':>7} {'vs 1':>6}")
    for r in rows:
        print(f"{r['devices']:7d} {r['per_s']:15.1f} {r['spread']:7.0%} {r['per_s'] / base:6.2f}x")


if __name__ == "__main__":
    main()
