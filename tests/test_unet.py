import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.config import UNET_PRESETS, UNetConfig
from ddpm_jax.unet import UNet, count_params, timestep_embedding

from .helpers import TINY_UNET

# Jitted: applied eagerly, op by op, the UNet compiles each op on its own (seconds per shape).
apply = jax.jit(lambda params, x, t: UNet(TINY_UNET).apply({"params": params}, x, t))
apply_train = jax.jit(
    lambda params, x, t, key: UNet(TINY_UNET).apply({"params": params}, x, t, train=True, rngs={"dropout": key})
)


def normal(seed, shape):
    """N(0, 1) float32 inputs, from numpy (JAX compiles its random ops on first use of each shape)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name, count", [("cifar10", 35_746_307), ("lsun", 113_673_219)])
def test_preset_parameter_counts(name, count):
    cfg = UNET_PRESETS[name]
    x = jax.ShapeDtypeStruct((1, cfg.resolution, cfg.resolution, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(UNet(cfg).init, jax.random.key(0), x, t)["params"]
    assert count_params(shapes) == count
    assert isinstance(shapes, dict) and "down_0" in shapes and "block_0" in shapes["down_0"]


def test_output_shape_and_finiteness(tiny_params):
    x = normal(0, (3, 8, 8, 1))
    eps = apply(tiny_params, x, jnp.array([0, 5, 39], jnp.int32))
    assert eps.shape == (3, 8, 8, 1) and eps.dtype == jnp.float32
    assert np.all(np.isfinite(eps))


def test_dropout_only_in_training(tiny_params):
    x = normal(0, (2, 8, 8, 1))
    t = jnp.array([3, 7], jnp.int32)
    a = apply(tiny_params, x, t)
    b = apply(tiny_params, x, t)
    np.testing.assert_array_equal(a, b)
    c = apply_train(tiny_params, x, t, jax.random.key(1))
    d = apply_train(tiny_params, x, t, jax.random.key(2))
    assert not np.allclose(c, d) and not np.allclose(a, c)


def test_timestep_embedding_formula():
    t = jnp.array([0, 1, 999], jnp.int32)
    emb = np.asarray(timestep_embedding(t, 8))
    freqs = np.exp(-np.arange(4) * np.log(10000.0) / 3)
    want = np.concatenate([np.sin(np.outer([0, 1, 999], freqs)), np.cos(np.outer([0, 1, 999], freqs))], 1)
    np.testing.assert_allclose(emb, want, atol=2e-4)


def test_each_sample_sees_its_own_t(tiny_params):
    """Output i depends on t[i] only: a batch equals its samples run alone."""
    x = normal(3, (2, 8, 8, 1))
    t = jnp.array([1, 30], jnp.int32)
    both = apply(tiny_params, x, t)
    for i in range(2):
        alone = apply(tiny_params, x[i : i + 1], t[i : i + 1])
        np.testing.assert_allclose(both[i : i + 1], alone, atol=1e-5)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        UNetConfig(ch=48)
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(resolution=20, ch_mult=(1, 2, 2, 2))


def test_applying_traces_no_initializer(tiny_params, monkeypatch):
    """The UNet takes its params as they are: Flax's check of each param against its initializer
    (a `jax.eval_shape` per param, half the cifar10 UNet's trace) is left out, since `Diffusion`
    checks every shape when it is given the params (tests/test_weights.py)."""
    traced = []
    eval_shape = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: traced.append(a) or eval_shape(*a, **k))
    x, t = normal(0, (1, 8, 8, 1)), jnp.array([3], jnp.int32)
    jax.make_jaxpr(lambda p: UNet(TINY_UNET).apply({"params": p}, x, t))(tiny_params)
    assert traced == []
    with pytest.raises(flax.errors.ScopeVariableNotFoundError, match='"kernel".*"/conv_in"'):  # still named
        missing = {**tiny_params, "conv_in": {"bias": tiny_params["conv_in"]["bias"]}}
        jax.make_jaxpr(lambda p: UNet(TINY_UNET).apply({"params": p}, x, t))(missing)
