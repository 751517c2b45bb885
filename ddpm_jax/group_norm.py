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


def group_norm(x, scale, bias, groups: int, eps: float, swish: bool = False, pad: int = 0):
    """Flax's nn.GroupNorm(groups, eps, use_fast_variance=False) with params scale, bias (C,) on x
    (n, ..., C), op for op: statistics over each image's pixels and each group of C/groups channels
    in float32 (at least), (x - mean) * (rsqrt(var + eps) * scale) + bias; then y * sigmoid(y)
    when `swish`; then, for x (n, H, W, C), `pad` zeros around H and W (a 3x3 conv's input)."""
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
    y = jax.nn.silu(y) if swish else y
    return jnp.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else y


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _native(x, scale, bias, groups, eps, swish, pad):
    n, c = x.shape[0], x.shape[-1]
    images = x if x.ndim == 4 else x.reshape(n, -1, 1, c)  # the kernel's (n, H, W, C)
    _, h, w, _ = images.shape
    out = jax.ShapeDtypeStruct((n, h + 2 * pad, w + 2 * pad, c), jnp.float32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    y = jax.lax.platform_dependent(
        images,
        scale,
        bias,
        cpu=lambda i, s, b: call(i, s, b, groups=groups, eps=np.float32(eps), swish=swish, pad=pad),
        default=lambda i, s, b: group_norm(i, s, b, groups, eps, swish, pad),
    )
    return y if pad else y.reshape(x.shape)


@_native.defjvp
def _native_jvp(groups, eps, swish, pad, primals, tangents):
    return jax.jvp(lambda *a: group_norm(*a, groups, eps, swish, pad), primals, tangents)


def fused(x, scale, bias, groups: int, eps: float, swish: bool = False, pad: int = 0):
    """`group_norm`, in the CPU kernel where it is ready and x, scale and bias are float32."""
    if pad and x.ndim != 4:
        raise ValueError(f"pad needs x (n, H, W, C), got shape {x.shape}")
    if ready() and x.ndim >= 3 and x.dtype == scale.dtype == bias.dtype == jnp.float32:
        return _native(x, scale, bias, groups, eps, swish, pad)
    return group_norm(x, scale, bias, groups, eps, swish, pad)
