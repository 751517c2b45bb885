"""GroupNorm (Wu & He 2018; the release's `normalize`, 32 groups), then swish if asked.

`group_norm` is Flax's `nn.GroupNorm` (use_fast_variance=False) as a function. `fused` computes
the same, in ddpm_jax's CPU kernel (`group_norm.cc`) once `native.prepare()` has made it ready and
everything is float32 on the CPU, else as `group_norm`: the fast CPU path's UNet runs it (`Ops`).
At batch 1 XLA spent 5.4 ms of the cifar10 step's 45 on GroupNorm in three passes per norm, each on
one core (docs/benchmarks.md, "GroupNorm in one kernel").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .native import ready

TARGET = "ddpm_jax_group_norm"


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float, swish: bool = False):
    """Flax's nn.GroupNorm(groups, eps, use_fast_variance=False) with params scale, bias (C,) on x
    (n, ..., C), op for op: statistics over each image's pixels and each group of C/groups channels
    in float32 (at least), (x - mean) * (rsqrt(var + eps) * scale) + bias; then y * sigmoid(y)
    when `swish`."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    c, size = x.shape[-1], x.shape[-1] // groups
    h = x.astype(dtype).reshape(*x.shape[:-1], groups, size)
    axes = tuple(range(1, x.ndim - 1)) + (h.ndim - 1,)
    mu = h.mean(axes)
    var = jnp.square(jnp.abs(h - jnp.expand_dims(mu, axes))).mean(axes)
    pixels = tuple(range(1, x.ndim - 1))
    mean = jnp.expand_dims(jnp.repeat(mu, size, axis=-1), pixels)
    var = jnp.expand_dims(jnp.repeat(var, size, axis=-1), pixels)
    shape = (1,) * (x.ndim - 1) + (c,)
    y = x - mean
    mul = jax.lax.rsqrt(var + eps) * scale.reshape(shape)
    y = y * mul + bias.reshape(shape)
    y = y.astype(jnp.result_type(x, scale, bias))
    return jax.nn.silu(y) if swish else y


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _native(x, scale, bias, groups, eps, swish):
    n, c = x.shape[0], x.shape[-1]
    flat = x.reshape(n, -1, c)  # the kernel's (images, pixels, channels)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(flat.shape, jnp.float32), vmap_method="sequential")
    y = jax.lax.platform_dependent(
        flat,
        scale,
        bias,
        cpu=lambda f, s, b: call(f, s, b, groups=groups, eps=np.float32(eps), swish=swish),
        default=lambda f, s, b: group_norm(f, s, b, groups, eps, swish),
    )
    return y.reshape(x.shape)


@_native.defjvp
def _native_jvp(groups, eps, swish, primals, tangents):
    return jax.jvp(lambda *a: group_norm(*a, groups, eps, swish), primals, tangents)


def fused(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float, swish: bool = False):
    """`group_norm`, in the CPU kernel where it is ready and x, scale and bias are float32."""
    if ready() and x.ndim >= 3 and x.dtype == scale.dtype == bias.dtype == jnp.float32:
        return _native(x, scale, bias, groups, eps, swish)
    return group_norm(x, scale, bias, groups, eps, swish)
