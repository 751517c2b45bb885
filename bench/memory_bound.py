"""How `ddpm_jax.memory.sample_bytes` (the lower bound that refuses batches
which cannot fit) compares with what XLA plans for one UNet call.

For each preset, the UNet forward is compiled (not run) for a batch and XLA's
temporary + output bytes per sample are set against the bound; a ratio above
1 means the bound refuses nothing that fits.

    python bench/memory_bound.py --presets digits cifar10 --batch 8
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from ddpm_jax.config import UNET_PRESETS
from ddpm_jax.memory import sample_bytes
from ddpm_jax.unet import UNet


def xla_bytes_per_sample(config, batch: int) -> float:
    x = jax.ShapeDtypeStruct((batch, config.resolution, config.resolution, config.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    params = jax.eval_shape(UNet(config).init, jax.random.key(0), x, t)
    compiled = jax.jit(UNet(config).apply).lower(params, x, t).compile()
    m = compiled.memory_analysis()
    return (m.temp_size_in_bytes + m.output_size_in_bytes) / batch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["digits", "cifar10"], choices=sorted(UNET_PRESETS))
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    print(f"backend {jax.default_backend()}, batch {args.batch}")
    for name in args.presets:
        cfg = UNET_PRESETS[name]
        bound, xla = sample_bytes(cfg), xla_bytes_per_sample(cfg, args.batch)
        print(f"{name}: bound {bound / 1e6:.3f} MB/sample, XLA {xla / 1e6:.3f} MB/sample, ratio {xla / bound:.2f}")


if __name__ == "__main__":
    main()
