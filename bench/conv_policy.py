"""The measurement behind `ddpm_jax.ops.CPU_WINOGRAD`: each 3x3 stride-1 conv shape of a
preset, timed as XLA's direct convolution and as Winograd F(2x2, 3x3) and F(4x4, 3x3).

Candidates alternate within each repeat, and the minimum over repeats is kept (the
least disturbed by other work); CPU time per call is printed beside it, since on a
shared machine it moves less than wall time.

    python bench/conv_policy.py                      # cifar10's shapes at batch 1 and 8
    python bench/conv_policy.py --preset lsun --batches 1
    python bench/conv_policy.py --batches 1,8,32 --against 4:2,8:4   # the whole step: the table vs another
    python bench/conv_policy.py --batches 8,32,64 --micro 0,4,8,16    # the whole step in micro-batches

With --against, the whole UNet step (the preset's, random weights, "auto"'s channel floor)
is timed instead under `CPU_WINOGRAD` and under the given table of (min map side, m)
pairs, alternating; median and min wall ms per call. With --micro, the whole step under
`CPU_WINOGRAD` with the batch run in micro-batches of each given number of images (0: the
whole batch in one call; `ops.in_micro_batches`, the choice behind `ops.CPU_MICRO_PIXELS`).
"""

from __future__ import annotations

import argparse
import sys
import time


def conv_shapes(preset: str) -> list[tuple[int, int, int]]:
    """(map side, in channels, out channels) of every 3x3 stride-1 conv of a preset's
    UNet with at least 32 channels in and out (conv_in and conv_out stay direct)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ddpm_jax.config import UNET_PRESETS
    from ddpm_jax.ops import Ops
    from ddpm_jax.unet import UNet

    cfg = UNET_PRESETS[preset]
    ops = Ops(((1, 2),))  # says which convs are eligible for Winograd at all
    x = jax.ShapeDtypeStruct((1, cfg.resolution, cfg.resolution, cfg.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if type(module).__name__ == "Conv3x3" and context.method_name == "__call__":
            if ops.winograd_tile(args[0].shape, module.features, module.stride):
                shapes[(args[0].shape[1], args[0].shape[-1], module.features)] = None
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(UNet(cfg, ops).init, jax.random.key(0), x, t)
    return sorted(shapes, key=lambda s: (-s[0], s[1], s[2]))


def time_shape(n, size, cin, cout, reps):
    """{candidate: (min wall ms, median CPU ms)} for one conv shape at batch n."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ddpm_jax import winograd

    x = jax.random.normal(jax.random.key(0), (n, size, size, cin))
    g = np.random.default_rng(0).standard_normal((3, 3, cin, cout)).astype(np.float32)
    direct = jax.jit(
        lambda x, g: jax.lax.conv_general_dilated(
            x, g, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    cands = {"direct": (direct, jnp.asarray(g))}
    for m in winograd.TILES:
        if size % m == 0 and size >= m:
            cands[f"F{m}"] = (
                jax.jit(lambda x, u, m=m: winograd.conv(x, u, m)),
                jnp.asarray(winograd.transform_kernel(g, m)),
            )
    for f, w in cands.values():
        f(x, w).block_until_ready()
    wall = {k: [] for k in cands}
    cpu = {k: [] for k in cands}
    for _ in range(reps):
        for k, (f, w) in cands.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f(x, w).block_until_ready()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (1000 * min(wall[k]), 1000 * sorted(cpu[k])[reps // 2]) for k in cands}


def parse_table(text: str) -> tuple[tuple[int, int], ...]:
    """'4:2,16:4' -> ((4, 2), (16, 4))."""
    return tuple(tuple(int(v) for v in pair.split(":")) for pair in text.split(","))


def time_steps(preset: str, cands: dict, n: int, reps: int) -> dict:
    """{name: (median wall ms, min wall ms)} of the preset's UNet step at batch n for each
    (Winograd table, images per micro-batch) in `cands` (same random params, each laid out
    for its table), alternating."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ddpm_jax.config import UNET_PRESETS
    from ddpm_jax.ops import AUTO_MIN_CHANNELS, Ops, in_micro_batches
    from ddpm_jax.run_layout import layout_params
    from ddpm_jax.unet import UNet, init_params

    cfg = UNET_PRESETS[preset]
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (n, cfg.resolution, cfg.resolution, cfg.in_channels))
    t = jnp.full((n,), 500, jnp.int32)
    runs = {}
    for name, (table, micro) in cands.items():
        ops = Ops(table, min_channels=AUTO_MIN_CHANNELS)
        model = UNet(cfg, ops)
        f = jax.jit(
            lambda p, x, t, model=model, micro=micro: in_micro_batches(
                lambda x, t: model.apply({"params": p}, x, t), x, t, micro
            )
        )
        run = layout_params(cfg, ops, params)
        f(run, x, t).block_until_ready()
        runs[name] = (f, run)
    wall = {k: [] for k in runs}
    for _ in range(reps):
        for k, (f, run) in runs.items():
            t0 = time.perf_counter()
            f(run, x, t).block_until_ready()
            wall[k].append(time.perf_counter() - t0)
    return {k: (1000 * float(np.median(w)), 1000 * min(w)) for k, w in wall.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--no-flags", action="store_true", help="leave out ddpm_jax.cpu_flags")
    p.add_argument("--against", type=parse_table, help="time the whole step under CPU_WINOGRAD and this table")
    p.add_argument("--micro", help="time the whole step in micro-batches of these many images (0: whole)")
    args = p.parse_args(argv)
    if not args.no_flags:
        from ddpm_jax.cpu_flags import use_cpu_flags

        use_cpu_flags()
    if args.against or args.micro:
        from ddpm_jax.ops import CPU_WINOGRAD

        if args.against:
            cands = {f"CPU_WINOGRAD {CPU_WINOGRAD}": (CPU_WINOGRAD, 0), f"against {args.against}": (args.against, 0)}
        else:
            cands = {f"micro {k}": (CPU_WINOGRAD, k) for k in map(int, args.micro.split(","))}
        print(f"{args.preset}: the whole UNet step, median / min wall ms per call over {args.reps}")
        for n in map(int, args.batches.split(",")):
            res = time_steps(args.preset, cands, n, args.reps)
            first = next(iter(res.values()))[0]
            cells = "  ".join(f"{k} {med:8.1f} / {low:8.1f}" for k, (med, low) in res.items())
            ratios = ", ".join(f"{med / first:.3f}" for med, _ in res.values())
            print(f"batch {n:3d}  {cells}  (medians over the first: {ratios})", flush=True)
        return 0
    print(f"{args.preset}: min wall ms / median CPU ms per call; best by wall time")
    for n in map(int, args.batches.split(",")):
        for size, cin, cout in conv_shapes(args.preset):
            res = time_shape(n, size, cin, cout, args.reps)
            best = min(res, key=lambda k: res[k][0])
            cells = "  ".join(f"{k} {w:7.2f} / {c:7.2f}" for k, (w, c) in res.items())
            print(
                f"batch {n:3d} {size:3d}x{size:<3d} {cin:4d}->{cout:<4d} {cells}  best {best} "
                f"({res['direct'][0] / res[best][0]:.2f}x direct)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
