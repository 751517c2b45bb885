"""Winograd's batched products on the CPU by ddpm_jax's own kernel (`batched_matmul.cc`).

XLA's CPU runtime runs a batched dot one matmul after another, and a matmul of a few rows (the
tiles of one image) on one core, so at batch 1 half of the cifar10 step ran on one of two cores.
The kernel shares the products of one call between XLA's intra-op threads. `batched_matmul` runs
it once `native.prepare()` has made ddpm_jax's CPU kernels ready, for float32 on the CPU, and
XLA's batched dot otherwise (another dtype or platform, `DDPM_JAX_NATIVE=0`, or no compiler: a
warning says why). Both give the same products to float32 rounding.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

from .native import ready

TARGET = "ddpm_jax_batched_matmul"
_xla_only = contextvars.ContextVar("ddpm_jax_xla_dot_only", default=False)


@contextlib.contextmanager
def xla_dot():
    """Programs traced in this block run XLA's batched dot, kernel or not (a function jitted and
    traced before keeps its program): XLA's cost analysis counts no FLOPs inside a custom call,
    and bench/sampling.py counts a step's this way."""
    token = _xla_only.set(True)
    try:
        yield
    finally:
        _xla_only.reset(token)


def _xla(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
    batch = tuple(range(a.ndim - 2))
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch)), preferred_element_type=out_dtype)


@jax.custom_jvp
def _native(a: jax.Array, b: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct(a.shape[:-1] + b.shape[-1:], jnp.float32)
    return jax.lax.platform_dependent(
        a,
        b,
        cpu=lambda a, b: jax.ffi.ffi_call(TARGET, out, vmap_method="broadcast_all")(a, b),
        default=lambda a, b: _xla(a, b, jnp.float32),
    )


@_native.defjvp
def _native_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    return _native(a, b), _xla(da, b, jnp.float32) + _xla(a, db, jnp.float32)


def batched_matmul(a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
    """a @ b over the last two axes, the leading ones (equal in both) a batch: (..., M, K) x
    (..., K, N) -> (..., M, N) in `out_dtype` (default a's). The kernel where `prepare()` made it
    ready and everything is float32, else XLA's dot_general."""
    out_dtype = jnp.dtype(out_dtype or a.dtype)
    if ready() and not _xla_only.get() and a.dtype == b.dtype == out_dtype == jnp.float32:
        return _native(a, b)
    return _xla(a, b, out_dtype)
