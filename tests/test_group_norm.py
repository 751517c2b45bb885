"""GroupNorm (+ swish) in ddpm_jax's CPU kernel (`ddpm_jax.group_norm`): Flax's nn.GroupNorm op for
op where it does not run, the same to float32 rounding where it does (any batch, map, channel
count and offset; under jit, vmap and grad), and only on the fast path's UNet."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import group_norm, native, winograd
from ddpm_jax.config import UNetConfig
from ddpm_jax.ops import CPU_WINOGRAD, Ops
from ddpm_jax.unet import UNet, init_params


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert native.prepare(), "the kernels could not be built here: see the warning logged"


def _runs_the_kernel(f, *args) -> bool:
    return group_norm.TARGET in jax.jit(f).lower(*args).as_text()


def _float64(x, scale, bias, groups, eps, swish, pad=0):
    x = np.asarray(x, np.float64)
    h = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean = h.mean((1, 3), keepdims=True)
    var = ((h - mean) ** 2).mean((1, 3), keepdims=True)
    y = ((h - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias
    y = y / (1 + np.exp(-y)) if swish else y
    return np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else y


def _operands(seed, shape, offset=0.0, spread=1.0):
    rng = np.random.default_rng(seed)
    x = (offset + spread * rng.standard_normal(shape)).astype(np.float32)
    scale, bias = rng.standard_normal((2, shape[-1])).astype(np.float32)
    return x, scale, bias


@pytest.mark.parametrize(
    "shape, groups, offset, spread",
    [
        ((1, 32, 32, 128), 32, 0.0, 1.0),  # cifar10's first level at batch 1: eight parts, two threads
        ((3, 8, 8, 512), 32, 2.0, 3.0),  # several images, each its own statistics
        ((2, 5, 7, 36), 4, 0.0, 1.0),  # channels past whole vectors, pixels not a multiple of anything
        ((1, 1, 1, 64), 32, 0.0, 1.0),  # one pixel: each group's two channels alone
        ((1, 16, 16, 256), 32, 1000.0, 0.01),  # a large offset: one-pass sums shifted by a pivot
        ((4, 9, 96), 32, -5.0, 20.0),  # (n, pixels, C)
    ],
)
@pytest.mark.parametrize("swish, pad", [(False, 0), (True, 0), (True, 1), (False, 2)])
def test_the_kernel_gives_a_float64_group_norm(shape, groups, offset, spread, swish, pad):
    if pad and len(shape) != 4:
        with pytest.raises(ValueError, match="pad needs x"):
            group_norm.fused(*_operands(0, shape), groups, 1e-6, swish, pad)
        return
    x, scale, bias = _operands(len(shape) + groups, shape, offset, spread)
    f = jax.jit(lambda x, s, b: group_norm.fused(x, s, b, groups, 1e-6, swish, pad))
    assert _runs_the_kernel(f, x, scale, bias)
    got = np.asarray(f(x, scale, bias))
    ref = _float64(x, scale, bias, groups, 1e-6, swish, pad)
    assert got.shape == ref.shape and got.dtype == np.float32
    if pad:  # the border is zeros exactly
        inner = np.zeros(got.shape, bool)
        inner[:, pad:-pad, pad:-pad] = True
        assert not got[~inner].any()
    # float32's x - mean loses what float32 cannot hold of a large offset, Flax's ops as much
    flax = np.asarray(jax.jit(lambda x, s, b: group_norm.group_norm(x, s, b, groups, 1e-6, swish, pad))(x, scale, bias))
    err, flax_err = np.abs(got - ref).max(), np.abs(flax - ref).max()
    assert err <= max(3e-6 * max(1.0, np.abs(ref).max()), 2 * flax_err), (err, flax_err)


@pytest.mark.parametrize("swish", [False, True])
def test_without_the_kernel_it_is_flaxs_group_norm_op_for_op(swish):
    x, scale, bias = _operands(0, (2, 8, 8, 64), 1.0, 2.0)
    flax = nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False)
    want = jax.jit(lambda x, s, b: flax.apply({"params": {"scale": s, "bias": b}}, x))(x, scale, bias)
    want = jax.nn.silu(want) if swish else want
    got = jax.jit(lambda x, s, b: group_norm.group_norm(x, s, b, 32, 1e-6, swish))(x, scale, bias)
    assert np.array_equal(np.asarray(got), np.asarray(want))


def test_other_dtypes_keep_xlas_ops():
    x, scale, bias = (a.astype(jnp.bfloat16) for a in _operands(1, (1, 4, 4, 64)))
    f = jax.jit(lambda x, s, b: group_norm.fused(x, s, b, 32, 1e-6, True))
    assert not _runs_the_kernel(f, x, scale, bias)
    assert f(x, scale, bias).dtype == jnp.bfloat16


def test_vmap_and_gradients_are_those_of_flaxs_ops():
    x, scale, bias = _operands(2, (2, 4, 4, 64), 0.5, 2.0)
    stack = np.stack([x, 3 * x + 1])

    def ref(x, s, b):
        return group_norm.group_norm(x, s, b, 32, 1e-6, True)

    def fused(x, s, b):
        return group_norm.fused(x, s, b, 32, 1e-6, True)

    batched = jax.vmap(fused, in_axes=(0, None, None))
    assert _runs_the_kernel(batched, stack, scale, bias)
    np.testing.assert_allclose(
        batched(stack, scale, bias), jax.vmap(ref, in_axes=(0, None, None))(stack, scale, bias), atol=2e-5
    )

    w = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    grads = jax.grad(lambda *a: jnp.sum(fused(*a) * w), argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(x, scale, bias)
    for g, r in zip(grads, want):
        np.testing.assert_allclose(g, r, atol=1e-4)


def test_only_the_fast_paths_unet_runs_it_and_both_agree():
    config = UNetConfig(resolution=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    params = init_params(config, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([3, 700])
    plain, fast = UNet(config), UNet(config, Ops(CPU_WINOGRAD, min_channels=1024))  # all convs XLA's
    assert not _runs_the_kernel(lambda p: plain.apply({"params": p}, x, t), params)
    assert _runs_the_kernel(lambda p: fast.apply({"params": p}, x, t), params)
    a = plain.apply({"params": params}, x, t)
    b = jax.jit(lambda p: fast.apply({"params": p}, x, t))(params)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.abs(a).max()))


@pytest.mark.parametrize("m", [0, 2, 4])  # XLA's conv, F(2x2), F(4x4)
def test_a_conv_on_the_padded_output_is_the_conv_of_the_output(m):
    x, scale, bias = _operands(5, (2, 8, 8, 64))
    g = np.random.default_rng(6).standard_normal((3, 3, 64, 32)).astype(np.float32) / 24
    ops, kernel = Ops(CPU_WINOGRAD), winograd.transform_kernel(g, m) if m else g
    zero = np.zeros(32, np.float32)

    def conv(pad):
        y = group_norm.fused(x, scale, bias, 32, 1e-6, True, pad)
        return ops.conv3x3(y, kernel, zero, m, 1, ((1, 1), (1, 1)), padded=bool(pad))

    np.testing.assert_allclose(jax.jit(lambda: conv(1))(), jax.jit(lambda: conv(0))(), rtol=0, atol=1e-5)
