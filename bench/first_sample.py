"""Time from a process's start to its first finished sample, cold and with the cache.

Runs `ddpm-jax sample --n 1` (the whole T-step chain) twice in fresh processes
that share an empty JAX persistent compilation cache: the first run compiles
and fills it, the second reads it.

    python bench/first_sample.py --model digits
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--runs", type=int, default=3, help="cached runs after the cold one")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DDPM_JAX_CACHE=tmp)
        cmd = [
            sys.executable,
            "-m",
            "ddpm_jax.cli",
            "sample",
            "--model",
            args.model,
            "--n",
            "1",
            "--out",
            os.path.join(tmp, "out"),
        ]
        times = []
        for _ in range(1 + args.runs):
            for f in os.listdir(os.path.join(tmp, "out")) if os.path.isdir(os.path.join(tmp, "out")) else []:
                os.remove(os.path.join(tmp, "out", f))
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
    cached = sorted(times[1:])
    print(
        f"model {args.model}: first sample (process start to PNG on disk), {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"  cold (empty compilation cache): {times[0]:.2f} s")
    print(
        f"  with the cache: median {cached[len(cached) // 2]:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times[1:])})"
    )


if __name__ == "__main__":
    main()
