"""Time from a process's start to its first saved picture, cold and warm, beside PyTorch + diffusers.

What a user waits for: `ddpm-jax sample --n N` (default 1, one batch) in fresh processes that share one JAX compilation
cache, empty for the first (cold) and filled for the rest (warm). With --torch, the same picture
through PyTorch and diffusers in fresh processes too: import, `from_pretrained` of the same
weights saved as a diffusers folder, the scheduler's steps (DDPMScheduler, DDIMScheduler or
DPMSolverMultistepScheduler), a PNG. Then one cold and one warm ddpm_jax process that time their
phases (importing, loading, the first chain, saving), and the same for PyTorch.

    python bench/first_sample.py --model digits                     # the bundled model, all T steps of DDPM
    python bench/first_sample.py --random cifar10 --steps 10 --sampler dpmpp_2m --torch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sampling import cpu_model, diffusers_module, make_weights

from ddpm_jax.ops import CONVS

DIFFUSERS_SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}

# A fresh process: one picture through ddpm_jax's public API, timing each phase.
JAX_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import ddpm_jax
from ddpm_jax.compile_cache import enable_compilation_cache
from ddpm_jax.ops import conv_for_job
phases = {"import": time.perf_counter() - t0}
def phase(name, start):
    phases[name] = time.perf_counter() - start
    return time.perf_counter()
t = time.perf_counter()
enable_compilation_cache()
model = ddpm_jax.Diffusion.from_pretrained(sys.argv[1]).respaced(json.loads(sys.argv[2]), sys.argv[3])
n = int(sys.argv[6])
conv = conv_for_job(sys.argv[5], n * model.num_timesteps)  # as `ddpm-jax sample --n N` picks it
model = model.respaced(model.num_timesteps, model.sampler, conv=conv)
model.run_params_for(n)  # the run layout of a call on n images (Winograd kernels), made on first use
t = phase("load", t)
x = model.denoise(n, key=0).block_until_ready()
t = phase("first chain", t)
x = model.denoise(n, key=0).block_until_ready()
t = phase("the chain again", t)
model.save(x, sys.argv[4] + "/{:03d}.png")
phase("save", t)
phases["conv"] = conv
print("PHASES " + json.dumps(phases))
"""

# A fresh process: the same picture through PyTorch and diffusers.
TORCH_PICTURE = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, torch, diffusers
from PIL import Image
phases = {"import": time.perf_counter() - t0}
t = time.perf_counter()
unet = diffusers.UNet2DModel.from_pretrained(sys.argv[1]).eval()
scheduler = getattr(diffusers, sys.argv[3]).from_pretrained(sys.argv[1])
scheduler.set_timesteps(json.loads(sys.argv[2]) or scheduler.config.num_train_timesteps)
phases["load"] = time.perf_counter() - t
t = time.perf_counter()
c, r = unet.config.in_channels, unet.config.sample_size
x = torch.randn(int(sys.argv[5]), c, r, r, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    for step in scheduler.timesteps:
        x = scheduler.step(unet(x, step).sample, step, x).prev_sample
phases["chain"] = time.perf_counter() - t
t = time.perf_counter()
u8 = ((x.permute(0, 2, 3, 1).clamp(-1, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
for i, img in enumerate(u8):
    Image.fromarray(img.squeeze(-1) if c == 1 else img).save(sys.argv[4] + f"/{i:03d}.png")
phases["save"] = time.perf_counter() - t
print("PHASES " + json.dumps(phases))
"""


def timed(cmd, env) -> tuple[float, dict]:
    """Wall seconds of a fresh process running `cmd`, and the phases it printed (if any)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} failed:\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PHASES ")]
    return wall, json.loads(lines[-1][len("PHASES ") :]) if lines else {}


def diffusers_folder(weights: str, folder: Path, sampler: str) -> Path:
    """`weights` as a diffusers folder: the UNet (safetensors) and the sampler's scheduler config."""
    import diffusers

    dcfg, _, unet = diffusers_module(weights)
    unet.save_pretrained(folder)
    scheduler = getattr(diffusers, DIFFUSERS_SCHEDULERS[sampler])(
        num_train_timesteps=dcfg.num_diffusion_timesteps,
        beta_start=dcfg.beta_start,
        beta_end=dcfg.beta_end,
        beta_schedule="linear",
    )
    scheduler.save_pretrained(folder)
    return folder


def fmt(times) -> str:
    return f"median {statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})"


def fmt_phases(phases: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in phases.items())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--model", default="digits", help="a bundled name or a .safetensors path")
    what.add_argument("--random", metavar="PRESET", help="random weights of a UNet preset (cifar10: the release's)")
    p.add_argument("--steps", type=int, help="chain steps (default: all T)")
    p.add_argument("--n", type=int, default=1, help="pictures, in one batch (default 1)")
    p.add_argument("--sampler", default="ddpm", help="a ddpm_jax sampler name")
    p.add_argument(
        "--conv", choices=CONVS, default="auto", help="ddpm-jax sample's --conv (auto: XLA's for a short job)"
    )
    p.add_argument("--runs", type=int, default=3, help="warm runs after the cold one")
    p.add_argument("--torch", action="store_true", help=f"also PyTorch + diffusers ({', '.join(DIFFUSERS_SCHEDULERS)})")
    args = p.parse_args()
    if args.torch and args.sampler not in DIFFUSERS_SCHEDULERS:
        p.error(f"--torch compares {', '.join(DIFFUSERS_SCHEDULERS)}; not {args.sampler}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_weights(args.random, tmp) if args.random else args.model
        env = dict(os.environ, DDPM_JAX_CACHE=str(tmp / "cache"))
        steps = [] if args.steps is None else ["--steps", str(args.steps)]
        cli = [sys.executable, "-m", "ddpm_jax.cli", "sample", "--model", model]
        cli += ["--n", str(args.n), "--batch", str(args.n)]
        cli += [*steps, "--sampler", args.sampler, "--conv", args.conv]
        jax_times = [timed([*cli, "--out", tmp / f"out{i}"], env)[0] for i in range(1 + args.runs)]
        phase_args = [model, json.dumps(args.steps), args.sampler, str(tmp), args.conv, str(args.n)]
        jax_cold = timed([sys.executable, "-c", JAX_PHASES, *phase_args], dict(env, DDPM_JAX_CACHE=str(tmp / "c2")))
        jax_warm = timed([sys.executable, "-c", JAX_PHASES, *phase_args], dict(env, DDPM_JAX_CACHE=str(tmp / "c2")))
        if args.torch:
            folder = diffusers_folder(model, tmp / "diffusers", args.sampler)
            scheduler = DIFFUSERS_SCHEDULERS[args.sampler]
            torch_args = [str(folder), json.dumps(args.steps), scheduler, str(tmp), str(args.n)]
            torch_runs = [timed([sys.executable, "-c", TORCH_PICTURE, *torch_args], env) for _ in range(1 + args.runs)]
    chain = f"{args.sampler}, {args.steps or 'all T'} steps"
    what = "first picture" if args.n == 1 else f"first {args.n} pictures (one batch)"
    print(f"{what} of {args.random or args.model} ({chain}): fresh process to PNG on disk")
    print(f"  {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"  ddpm-jax sample, cold (empty compilation cache): {jax_times[0]:.2f} s")
    print(f"  ddpm-jax sample, warm: {fmt(jax_times[1:])}")
    if args.torch:
        print(f"  PyTorch + diffusers: {fmt([t for t, _ in torch_runs])}")
    print("  phases (s):")
    print(f"    ddpm_jax cold: {fmt_phases(jax_cold[1])} (process {jax_cold[0]:.2f})")
    print(f"    ddpm_jax warm: {fmt_phases(jax_warm[1])} (process {jax_warm[0]:.2f})")
    if args.torch:
        wall, phases = torch_runs[-1]
        print(f"    PyTorch + diffusers: {fmt_phases(phases)} (process {wall:.2f})")


if __name__ == "__main__":
    main()
