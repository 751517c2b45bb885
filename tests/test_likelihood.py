"""The variational bound in bits/dim against independent float64 numpy (the release's formulas)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import DiffusionConfig
from ddpm_jax.coefficients import coefficients_float64, make_coefficients
from ddpm_jax.likelihood import (
    Bound,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bpd,
    rate_distortion,
    vb_term_bpd,
)
from ddpm_jax.sampling import BOUND, per_sample_normal

from .helpers import four_images

LN2 = np.log(2.0)
VAR_TYPES = ("fixedlarge", "fixedsmall")


# --- float64 references, written from diffusion_tf's normal_kl, approx_standard_normal_cdf,
# discretized_gaussian_log_likelihood, _vb_terms_bpd and _prior_bpd.


def kl64(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def cdf64(z):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3)))


def loglik64(x, means, log_scales):
    inv = np.exp(-log_scales)
    plus, minus = cdf64(inv * (x - means + 1 / 255)), cdf64(inv * (x - means - 1 / 255))
    return np.where(
        x < -0.999,
        np.log(np.maximum(plus, 1e-12)),
        np.where(x > 0.999, np.log(np.maximum(1 - minus, 1e-12)), np.log(np.maximum(plus - minus, 1e-12))),
    )


def tables64(T, var_type):
    """The float64 tables, with the bound's clipped log-variances built from their definition."""
    c = coefficients_float64(DiffusionConfig(num_diffusion_timesteps=T, model_var_type=var_type))
    pv = c["posterior_variance"]
    post = np.log(np.concatenate([[pv[1]], pv[1:]]))
    model = np.log(np.concatenate([[pv[1]], c["betas"][1:]])) if var_type == "fixedlarge" else post
    return c, post, model


def term64(eps, x0, x_t, t, tables, clip):
    """(term in bits/dim, mse) per image at 0-based t, all float64."""
    c, post, model = tables
    abar = c["alphas_cumprod"][t]
    pred = np.sqrt(1 / abar) * x_t - np.sqrt(1 / abar - 1) * eps
    if clip:
        pred = np.clip(pred, -1, 1)
    c1, c2 = c["posterior_mean_coef1"][t], c["posterior_mean_coef2"][t]
    model_mean = c1 * pred + c2 * x_t
    if t == 0:
        per_dim = -loglik64(x0, model_mean, 0.5 * model[t])
    else:
        per_dim = kl64(c1 * x0 + c2 * x_t, post[t], model_mean, model[t])
    axes = tuple(range(1, x0.ndim))
    return per_dim.mean(axis=axes) / LN2, ((pred - x0) ** 2).mean(axis=axes)


def grid_x0(rng, n=4, shape=(8, 8, 1)):
    """Images on the 8-bit grid in [-1, 1], with pixels at both ends."""
    k = rng.integers(0, 256, (n, *shape))
    k[:, 0, :2] = 0
    k[:, -1, -2:] = 255
    return k / 127.5 - 1.0


def f32(a):
    return np.asarray(a, np.float32)


# --- the pieces


def test_normal_kl_matches_float64():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 1000))
    lv1, lv2 = rng.uniform(-12, 2, size=(2, 1000))
    ours = np.asarray(normal_kl(*map(jnp.asarray, map(f32, (m1, lv1, m2, lv2)))))
    want = kl64(*(f32(a).astype(np.float64) for a in (m1, lv1, m2, lv2)))
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(normal_kl(m1, lv1, m1, lv1)) == 0.0)


def test_approx_cdf_matches_float64_and_the_exact_cdf():
    from scipy.special import ndtr

    z = np.linspace(-12, 12, 4001)
    ours = np.asarray(approx_standard_normal_cdf(jnp.asarray(f32(z))), np.float64)
    want = cdf64(f32(z).astype(np.float64))
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-7)
    assert np.abs(ours - ndtr(z)).max() < 2e-4  # the tanh approximation itself


@pytest.mark.parametrize("log_scale", [0.5 * np.log(5.4e-5), np.log(0.02), np.log(0.3)])
def test_discretized_log_likelihood_matches_float64(log_scale):
    """Means up to 6 standard deviations away on both sides, end bins included."""
    rng = np.random.default_rng(1)
    x = grid_x0(rng, 8)
    means = f32(x + np.exp(log_scale) * rng.uniform(-6, 6, x.shape))
    ls = np.full(x.shape, log_scale, np.float32)
    ours = np.asarray(
        discretized_gaussian_log_likelihood(jnp.asarray(f32(x)), jnp.asarray(means), jnp.asarray(ls)), np.float64
    )
    want = loglik64(f32(x).astype(np.float64), means.astype(np.float64), ls.astype(np.float64))
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    ends = np.abs(x) == 1.0
    assert ends.any() and np.all(ours <= 0)


def test_clipped_tables_are_the_releases():
    for var_type in VAR_TYPES:
        c, post, model = tables64(1000, var_type)
        ours = coefficients_float64(DiffusionConfig(model_var_type=var_type))
        np.testing.assert_array_equal(ours["posterior_log_variance_clipped"], post)
        np.testing.assert_array_equal(ours["model_log_variance_clipped"], model)
        assert np.all(np.isfinite(post))


@pytest.mark.parametrize("var_type", VAR_TYPES)
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_vb_term_matches_float64(var_type, clip, t):
    T = 1000
    tables = tables64(T, var_type)
    rng = np.random.default_rng(t)
    x0 = f32(grid_x0(rng))
    abar = tables[0]["alphas_cumprod"][t]
    noise, eps = rng.normal(size=(2, *x0.shape))
    # A model that is right up to 10% of the noise; x_0 at +-1 clips either way.
    eps = f32(noise + 0.1 * eps)
    x_t = f32(np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise)
    coeffs = make_coefficients(DiffusionConfig(num_diffusion_timesteps=T, model_var_type=var_type))
    tt = jnp.full((len(x0),), t, jnp.int32)
    term, mse = vb_term_bpd(jnp.asarray(eps), jnp.asarray(x0), jnp.asarray(x_t), tt, coeffs, clip=clip)
    want_term, want_mse = term64(eps.astype(np.float64), x0.astype(np.float64), x_t.astype(np.float64), t, tables, clip)
    np.testing.assert_allclose(np.asarray(term), want_term, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mse), want_mse, rtol=1e-5, atol=1e-7)


def test_prior_matches_float64():
    rng = np.random.default_rng(3)
    x0 = f32(grid_x0(rng))
    c = coefficients_float64(DiffusionConfig())
    abar = c["alphas_cumprod"][-1]
    want = kl64(np.sqrt(abar) * x0.astype(np.float64), np.log(1 - abar), 0.0, 0.0).mean(axis=(1, 2, 3)) / LN2
    ours = np.asarray(prior_bpd(jnp.asarray(x0), make_coefficients(DiffusionConfig())))
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-9)


def test_rate_distortion_is_the_cumulative_rate_and_the_rmse():
    rng = np.random.default_rng(4)
    n, T = 5, 12
    terms, mse = rng.uniform(0, 1, (n, T)), rng.uniform(0, 0.1, (n, T))
    prior = rng.uniform(0, 0.01, n)
    rd = rate_distortion(Bound(terms.sum(1) + prior, terms, prior, mse))
    np.testing.assert_array_equal(rd.reverse_time, np.arange(1, T + 1))
    for r in range(1, T + 1):
        t = T - r + 1  # the paper's t: x_t has just been received
        want_rate = np.mean(prior + terms[:, t:].sum(axis=1))  # L_T + L_{T-1} + ... + L_t
        np.testing.assert_allclose(rd.rate[r - 1], want_rate, rtol=1e-12)
        np.testing.assert_allclose(rd.distortion[r - 1], 127.5 * np.sqrt(mse[:, t - 1].mean()), rtol=1e-12)
    np.testing.assert_allclose(rd.rate[-1] + terms[:, 0].mean(), (terms.sum(1) + prior).mean())


# --- the whole bound of a tiny random UNet (T = 40, chunks of 8: `tiny_model`); every test
# here uses batches of 4 or 1, so the bound compiles twice in all.


def test_whole_bound_matches_a_float64_loop(tiny_model):
    """Every term of 4 images against a numpy loop over t with the same noise and the model's eps.

    (fixedlarge here; fixedsmall differs only in the tables, checked term by term above.)
    """
    T = tiny_model.num_timesteps
    images = four_images(5)
    got = tiny_model.bpd(images, key=7)
    x0 = images / 127.5 - 1.0
    tables = tables64(T, tiny_model.diffusion_config.model_var_type)
    eps_fn = jax.jit(tiny_model.eps)
    ids = jnp.arange(4, dtype=jnp.int32)
    terms, mse = np.zeros((4, T)), np.zeros((4, T))
    for t in range(T):
        noise = np.asarray(per_sample_normal(jax.random.key(7), BOUND, ids, t, x0.shape[1:]), np.float64)
        abar = tables[0]["alphas_cumprod"][t]
        x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
        eps = np.asarray(eps_fn(f32(x_t), jnp.full((4,), t, jnp.int32)), np.float64)
        terms[:, t], mse[:, t] = term64(eps, x0, x_t, t, tables, clip=True)
    abar = tables[0]["alphas_cumprod"][-1]
    prior = kl64(np.sqrt(abar) * x0, np.log(1 - abar), 0.0, 0.0).mean(axis=(1, 2, 3)) / LN2
    assert got.terms.shape == got.mse.shape == (4, T) and got.total.shape == got.prior.shape == (4,)
    np.testing.assert_allclose(got.terms, terms, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(got.mse, mse, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(got.prior, prior, atol=1e-6)
    np.testing.assert_allclose(got.total, terms.sum(1) + prior, atol=1e-3)
    np.testing.assert_allclose(got.total, got.terms.sum(1, dtype=np.float64) + got.prior, rtol=1e-12)


def test_an_image_has_the_same_bound_alone_or_in_a_batch(tiny_model):
    images = four_images(6)
    batch = tiny_model.bpd(images, key=2)
    alone = tiny_model.bpd(images[2:3], key=2, first_index=2)
    for a, b in zip(alone, batch):
        np.testing.assert_allclose(a, b[2:3], rtol=1e-5, atol=1e-6)
    other_seed = tiny_model.bpd(images[2:3], key=3, first_index=2)
    assert np.abs(other_seed.terms - alone.terms).max() > 1e-3  # the noise is the key's
    # floats on the grid give the same bound as the uint8 images
    as_float = tiny_model.bpd(images[2:3].astype(np.float32) / 127.5 - 1.0, key=2, first_index=2)
    np.testing.assert_array_equal(as_float.terms, alone.terms)


def test_four_devices_give_the_same_bound(tiny_model, on_four_devices):
    """The bound of four_images(8) on a mesh of 4 devices (3 images refused there), see
    helpers.FOUR_DEVICE_SCRIPT: run once for this and test_scale_out.py's samples."""
    four = on_four_devices("bound")
    one = tiny_model.bpd(four_images(8), key=1)  # the params `saved` holds
    for name in Bound._fields:
        np.testing.assert_allclose(four[name], getattr(one, name), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "x0, error, match",
    [
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError, r"shape \(2, 8, 8, 3\).*\(n, 8, 8, 1\)"),
        (np.zeros((8, 8, 1), np.uint8), ValueError, r"x0\[None\]"),
        (np.zeros((0, 8, 8, 1), np.uint8), ValueError, "n >= 1"),
        (np.full((1, 8, 8, 1), 1.5, np.float32), ValueError, r"values in \[1\.5, 1\.5\].*\[-1, 1\]"),
        (np.full((1, 8, 8, 1), np.nan, np.float32), ValueError, "NaN or infinite"),
        (np.full((1, 8, 8, 1), 0.001, np.float32), ValueError, "not on the 8-bit grid"),
        (np.zeros((1, 8, 8, 1), np.int32), TypeError, "dtype int32; expected uint8"),
        ([[0]], TypeError, "must be an array"),
    ],
)
def test_bad_images_are_refused(tiny_model, x0, error, match):
    with pytest.raises(error, match=match):
        tiny_model.bpd(x0)
