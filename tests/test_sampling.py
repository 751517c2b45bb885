"""The chunked scans as `Diffusion` drives them: diffusing, bad input, respacing, precision; x_T.

Chains here sample 3 images (or 1), as the sampler contract does on the same model, so that
they run the programs it compiles (tests/sampler_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import Diffusion
from ddpm_jax.sampling import INIT, initial_noise, per_sample_normal

from .helpers import TINY_DIFFUSION, TINY_UNET


def test_diffusing_never_recompiles_across_steps_starts_seeds_or_chains(tiny_model):
    """(Denoising is in the sampler contract, tests/sampler_contract.py.)"""
    x = np.zeros((2, 8, 8, 1), np.float32)
    tiny_model.diffuse(2, n_steps=2, x=x, curr_step=0, key=1)
    compiled = tiny_model._diffuse_chunk._cache_size()
    tiny_model.diffuse(2, n_steps=7, x=x, curr_step=30, key=2)
    tiny_model.diffuse(2, n_steps=3, x=x, key=jax.random.key(3), steps=5, sampler="dpmpp_2m")
    tiny_model.respaced(9, "ddim").diffuse(2, x=x, key=4)
    assert tiny_model._diffuse_chunk._cache_size() == compiled


def test_diffuse_resumes_and_reaches_noise(tiny_model):
    m, T = tiny_model, tiny_model.num_timesteps
    x0 = np.zeros((2, 8, 8, 1), np.float32)
    whole = m.diffuse(2, x=x0, key=3)
    half = m.diffuse(2, n_steps=11, x=x0, key=3)
    rest = m.diffuse(2, x=half, curr_step=11, key=3)
    np.testing.assert_array_equal(rest, whole)
    # After all T steps from zeros, x_T ~ N(0, 1 - abar_T) per pixel.
    abar = float(m.coeffs.alphas_cumprod[T - 1])
    assert abs(float(np.var(whole)) - (1 - abar)) < 0.35


def test_callback_between_chunks(tiny_model):
    seen = []
    tiny_model.denoise(1, n_steps=20, key=0, callback=lambda s: seen.append((s.step, s.x.shape, s.pred_x0.shape)))
    T = tiny_model.num_timesteps
    assert [s for s, _, _ in seen] == [T - 8, T - 16, T - 20]
    assert all(shape == (1, 8, 8, 1) for _, shape, _ in seen)


def test_full_chain_is_finite_and_in_range(tiny_model):
    x = np.asarray(tiny_model.denoise(3, key=0))
    assert np.all(np.isfinite(x)) and np.abs(x).max() < 1.5


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_steps=0), "n_steps=0 is out of range"),
        (dict(n_steps=41), "n_steps=41 is out of range"),
        (dict(curr_step=0, x=np.zeros((3, 8, 8, 1), np.float32)), "curr_step=0 is out of range"),
        (dict(curr_step=41), "curr_step=41 is out of range"),
        (dict(n_steps=5, curr_step=3, x=np.zeros((3, 8, 8, 1), np.float32)), "n_steps=5 is out of range"),
        (dict(curr_step=10), "x is required"),
        (dict(x=np.zeros((3, 8, 8, 3), np.float32)), r"shape \(3, 8, 8, 3\).*\(3, 8, 8, 1\)"),
        (dict(x=np.zeros((2, 8, 8, 1), np.float32)), "shape"),
        (dict(x=np.zeros((3, 8, 8, 1), np.float64)), "dtype float64.*float32"),
        (dict(n_steps=2.5), "n_steps must be an int"),
    ],
)
def test_denoise_bad_input_raises_and_changes_nothing(tiny_model, kw, match):
    before = tiny_model.denoise(3, n_steps=2, key=0)
    params = jax.tree.map(np.array, tiny_model.params)
    x_in = kw.get("x")
    x_copy = None if x_in is None else x_in.copy()
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_model.denoise(3, key=0, **kw)
    if x_in is not None:
        np.testing.assert_array_equal(x_in, x_copy)
    jax.tree.map(np.testing.assert_array_equal, tiny_model.params, params)
    np.testing.assert_array_equal(tiny_model.denoise(3, n_steps=2, key=0), before)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(), "diffuse needs x"),
        (dict(curr_step=40), "curr_step=40 is out of range"),
        (dict(curr_step=35, n_steps=6), "n_steps=6 is out of range"),
        (dict(curr_step=-1), "curr_step=-1"),
    ],
)
def test_diffuse_bad_input(tiny_model, kw, match):
    if "curr_step" in kw:
        kw["x"] = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=match):
        tiny_model.diffuse(2, key=0, **kw)


def test_respaced_full_length_ddpm_is_the_plain_chain(tiny_model):
    same = tiny_model.respaced(tiny_model.num_timesteps)
    np.testing.assert_array_equal(same.denoise(3, key=5), tiny_model.denoise(3, key=5))


def test_respaced_chains(tiny_model):
    ddim = tiny_model.respaced(7, sampler="ddim", eta=0.0)
    assert ddim.num_timesteps == 7
    a = ddim.denoise(3, key=1)
    b = ddim.denoise(3, key=2)
    # eta = 0 is deterministic given x_T: only x_T differs between seeds.
    start = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        ddim.denoise(3, x=start, curr_step=7, key=1), ddim.denoise(3, x=start, curr_step=7, key=2)
    )
    assert not np.allclose(a, b)
    strided = tiny_model.respaced(7, sampler="ddpm")
    c = strided.denoise(3, x=start, curr_step=7, key=1)
    d = strided.denoise(3, x=start, curr_step=7, key=2)
    assert not np.allclose(c, d) and np.all(np.isfinite(c))
    # The model sees the original timesteps of the respaced chain.
    np.testing.assert_array_equal(strided.coeffs.timesteps, [0, 7, 13, 20, 26, 33, 39])
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        tiny_model.respaced(7, sampler="plms")
    with pytest.raises(ValueError, match="steps=41 is out of range"):
        tiny_model.respaced(41)


def test_bfloat16_unet_stays_close_to_float32(tiny_model, tiny_params):
    bf16 = Diffusion(
        diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, chunk_size=8, precision="bfloat16"
    )
    assert jax.tree.leaves(bf16.run_params)[0].dtype == jax.numpy.bfloat16
    a, b = np.asarray(bf16.denoise(3, key=3)), np.asarray(tiny_model.denoise(3, key=3))
    assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert 0 < np.abs(a - b).max() < 0.25
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, precision="float16")


def test_initial_noise_is_the_default_compiles_bits():
    """x_T's program, compiled at a lower LLVM level to start sooner, gives the bits of the default."""
    key, ids = jax.random.key(7), jnp.arange(5, 69, dtype=jnp.int32)
    default = jax.jit(lambda k, i: per_sample_normal(k, INIT, i, 0, (32, 32, 3)))(key, ids)
    np.testing.assert_array_equal(np.asarray(initial_noise(key, ids, (32, 32, 3))), np.asarray(default))
