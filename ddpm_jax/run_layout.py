"""The UNet's params as they run (`Ops`): their shapes, and the params laid out so.

`run_shapes(config, ops)` costs a trace of the UNet's init through Flax (0.4 s at the cifar10 size
on a 2-core Xeon), once per machine: it is kept on disk beside the stored programs
(`stored_programs.stored_json`), and shipped in the package (`models/run_shapes.json`) for each
preset under the `Ops` a CPU picks by default, so that even a first process loads a model of a
released architecture without tracing it. After a change to the UNet's params or to
`ops.CPU_WINOGRAD` or `CPU_WINOGRAD_SMALL`, regenerate that file (tests/test_run_layout.py fails
until then):

    python -c "from ddpm_jax.run_layout import write_shipped; write_shipped()"
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import native, stored_programs, winograd
from .atomic import atomic_path
from .config import UNET_PRESETS, UNetConfig
from .ops import Ops, choose_ops
from .unet import UNet

SHIPPED = Path(__file__).parent / "models" / "run_shapes.json"


def shipped_ops() -> tuple[Ops, ...]:
    """The `Ops` of a float32 model on the CPU: XLA's convolution (a short job, and the shapes
    loading checks against), Winograd where "auto" picks it, and Winograd everywhere, each of the
    last two for batches and for calls on one or two small images (`ops.SMALL_CALL_PIXELS`)."""
    return (Ops(),) + tuple(
        choose_ops("float32", conv, "cpu", pixels) for conv in ("auto", "winograd") for pixels in (None, 1)
    )


def fingerprint(config: UNetConfig, ops: Ops) -> str:
    """What the run shapes depend on: the config (its dropout aside, which has no params) and ops."""
    return f"{dataclasses.replace(config, dropout=0.0)!r}|{ops!r}"


def trace_shapes(config: UNetConfig, ops: Ops) -> dict:
    """UNet(config, ops)'s params as a tree of [shape, dtype name], from a trace of its init."""
    x = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, config.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(UNet(config, ops).init, jax.random.key(0), x, t)["params"]
    return jax.tree.map(lambda s: [list(s.shape), s.dtype.name], shapes)


@functools.cache
def _shipped() -> dict:
    return json.loads(SHIPPED.read_text())


@functools.lru_cache(maxsize=16)
def run_shapes(config: UNetConfig, ops: Ops) -> dict:
    """The shapes (ShapeDtypeStructs) of UNet(config, ops)'s params: a Winograd conv's kernel is
    (m+2, m+2, I, O). Shipped for the presets, else traced once and kept on disk."""
    key = fingerprint(config, ops)
    stored = _shipped().get(key) or stored_programs.stored_json("run_shapes", key, lambda: trace_shapes(config, ops))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s[0]), s[1]), stored, is_leaf=_is_shape)


def _is_shape(node) -> bool:
    return isinstance(node, list)  # [shape, dtype]: the tree's nodes are dicts


def layout_params(config: UNetConfig, ops: Ops, params: dict) -> dict:
    """`params` as UNet(config, ops) runs them: the kernel of each 3x3 conv that
    `ops` runs as Winograd F(m x m, 3x3) transformed once (`winograd.transform_kernel`),
    every other leaf as it is."""
    shapes = run_shapes(config, ops)

    def lay(a, want):
        if a.shape == want.shape:
            return a
        native.prepare()  # the CPU kernels (products, GroupNorm), before a program is traced
        # device_put: jnp.asarray compiles a copying program per shape (jax 0.10), seconds cold
        return jax.device_put(winograd.transform_kernel(np.asarray(a), want.shape[0] - 2))

    return jax.tree.map(lay, params, shapes)


def write_shipped(path: Path = SHIPPED) -> dict:
    """Trace every preset under each of `shipped_ops()` and write the table to `path`."""
    table = {fingerprint(c, ops): trace_shapes(c, ops) for c in UNET_PRESETS.values() for ops in shipped_ops()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(table, sort_keys=True, separators=(",", ":")) + "\n")
    return table
