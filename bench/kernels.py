"""The UNet step on ddpm_jax's CPU kernels against the same step without each.

Random weights of a preset's architecture (cifar10 by default), the fast CPU path's layout for
--batch (`Ops` as `Diffusion` picks it), four programs compiled in one process and run in turn
--reps times: the library's (Winograd's products on ddpm_jax/batched_matmul.cc; GroupNorm, swish
and the next conv's zero border on ddpm_jax/group_norm.cc), `no_border` (XLA pads the conv's
input), `flax` (Flax's GroupNorm ops, XLA's fusions) and `xla_products` (XLA's batched dot for
the products). Prints the median ms per step of each and its ratio to the library's, and the
largest gap between their outputs.

    python bench/kernels.py                 # cifar10 at batch 1, 40 rounds
    python bench/kernels.py --batch 8 --reps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

from sampling import cpu_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cifar10", help="a preset of ddpm_jax.UNET_PRESETS (random weights)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=40)
    args = p.parse_args()

    from ddpm_jax.cpu_flags import use_cpu_flags

    use_cpu_flags()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ddpm_jax import UNET_PRESETS, batched_matmul, group_norm, native
    from ddpm_jax.ops import Ops, choose_ops
    from ddpm_jax.run_layout import layout_params
    from ddpm_jax.unet import UNet, init_params

    if not native.prepare():
        raise SystemExit("ddpm_jax's CPU kernels are not available here (see the warning above)")
    cfg = UNET_PRESETS[args.preset]
    n = args.batch
    ops = choose_ops("float32", "auto", jax.default_backend(), call_pixels=n * cfg.resolution**2)
    params = layout_params(cfg, ops, init_params(cfg, jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (n, cfg.resolution, cfg.resolution, cfg.in_channels))
    t = jnp.full((n,), 500, jnp.int32)

    def compiled():
        model = UNet(cfg, ops)
        return jax.jit(lambda p, x, t: model.apply({"params": p}, x, t)).lower(params, x, t).compile()

    programs = {"library": compiled()}
    fused, norm_pad = group_norm.fused, Ops.norm_pad
    try:
        Ops.norm_pad = property(lambda self: 0)
        programs["no_border"] = compiled()
        group_norm.fused = group_norm.group_norm
        programs["flax"] = compiled()
    finally:
        group_norm.fused, Ops.norm_pad = fused, norm_pad
    with batched_matmul.xla_dot():
        programs["xla_products"] = compiled()
    text = {k: f.as_text() for k, f in programs.items()}
    assert group_norm.TARGET in text["library"] and group_norm.TARGET not in text["flax"]
    assert batched_matmul.TARGET not in text["xla_products"]
    products = batched_matmul.TARGET in text["library"]  # none where every conv is XLA's (small maps)

    outs = {k: np.asarray(f(params, x, t)) for k, f in programs.items()}
    gap = max(float(np.abs(o - outs["library"]).max()) for o in outs.values())
    times = {k: [] for k in programs}
    for _ in range(args.reps):
        for k, f in programs.items():
            start = time.perf_counter()
            f(params, x, t).block_until_ready()
            times[k].append(time.perf_counter() - start)
    ms = {k: 1e3 * statistics.median(v[2:] or v) for k, v in times.items()}
    print(
        f"{args.preset} batch {n}, {cpu_model()}, {args.reps} rounds; outputs within {gap:.1e} of each other; "
        f"Winograd's products on the kernel: {'yes' if products else 'none in this layout'}"
    )
    for k, v in ms.items():
        print(f"  {k:12s} {v:7.1f} ms/step   library / this: {ms['library'] / v:.3f}")


if __name__ == "__main__":
    main()
