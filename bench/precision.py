"""How far each precision option moves a whole chain's x_0 from float32, and its time per step.

Every chain starts from the same x_T and draws the same noise (same seed);
only how the UNet computes differs (the step math stays float32). The
reference is float32 with XLA's convolution, the release's UNet as written.

    python bench/precision.py                          # bundled digits, 64 samples, all 1000 steps
    python bench/precision.py --model cifar10 --n 4 --steps 100
    python bench/precision.py --steps 10 --n 4 --json out.json   # seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

# (precision, conv) for each option; the first is the reference.
OPTIONS = (
    ("float32", "xla"),
    ("float32", "winograd"),
    ("bfloat16", "xla"),
    ("mixed_bf16", "xla"),
    ("mixed_bf16", "winograd"),
)


def timed_chain(model, n, seed):
    """(final x as numpy, seconds per step) of a whole chain, compiled beforehand."""
    import numpy as np

    model.denoise(n, n_steps=min(model.chunk_size, model.num_timesteps), key=seed)  # compile
    t0 = time.perf_counter()
    x = np.asarray(model.denoise(n, key=seed))
    return x, (time.perf_counter() - t0) / model.num_timesteps


def deviation(x, ref, to_uint8) -> dict:
    """x vs ref (images in [-1, 1]): max and mean |diff|, and the share of
    uint8 pixels that differ by more than 8 levels."""
    import numpy as np

    d = np.abs(x - ref)
    u8 = np.abs(to_uint8(x, clip=True).astype(int) - to_uint8(ref, clip=True).astype(int))
    return dict(max_abs=float(d.max()), mean_abs=float(d.mean()), pixels_off_by_8=float((u8 > 8).mean()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits", help="a bundled or pretrained name, or a .safetensors path")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="respaced DDPM chain of this many steps (default: all T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=1, help="timed chains per option")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    from ddpm_jax.cpu_flags import use_cpu_flags

    use_cpu_flags()  # before JAX starts its backend
    import jax

    from ddpm_jax import Diffusion
    from ddpm_jax.atomic import write_json

    base = Diffusion.from_pretrained(args.model, chunk_size=50)
    steps = args.steps or base.num_timesteps
    rows = []
    for precision, conv in OPTIONS:
        m = base.respaced(steps, precision=precision, conv=conv)
        runs = [timed_chain(m, args.n, args.seed) for _ in range(args.reps)]
        rows.append(
            dict(precision=precision, conv=conv, x=runs[0][0], ms_per_step=1000 * statistics.median(t for _, t in runs))
        )
    ref = rows[0]["x"]
    for r in rows:
        r.update(deviation(r.pop("x"), ref, base.to_uint8))
    result = dict(
        model=args.model,
        n=args.n,
        steps=steps,
        seed=args.seed,
        device=jax.devices()[0].device_kind,
        reference="float32, conv xla",
        options=rows,
    )
    print(
        f"model {args.model}, {args.n} samples, {steps} steps, {result['device']}; "
        f"final x_0 vs float32 with XLA's convolution (images in [-1, 1])"
    )
    print(f"  {'precision':11} {'conv':9} {'ms/step':>8} {'max |diff|':>10} {'mean |diff|':>11} {'uint8 off > 8':>13}")
    for r in rows:
        print(
            f"  {r['precision']:11} {r['conv']:9} {r['ms_per_step']:8.2f} {r['max_abs']:10.2e} "
            f"{r['mean_abs']:11.2e} {100 * r['pixels_off_by_8']:12.2f}%"
        )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
