"""The step functions against a float64 numpy reference written from the paper's
equations (docs/reference.md §1)."""

import numpy as np
import pytest

from ddpm_jax.coefficients import make_coefficients
from ddpm_jax.config import DiffusionConfig
from ddpm_jax.diffusion import denoising_step, diffusion_step, q_sample
from ddpm_jax.schedule import get_beta_schedule

T = 1000


def ref_tables(var_type):
    b = get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=T)
    a = 1 - b
    abar = np.cumprod(a)
    prev = np.concatenate([[1.0], abar[:-1]])
    post = b * (1 - prev) / (1 - abar)
    logvar = np.log(np.concatenate([[post[1]], b[1:]])) if var_type == "fixedlarge" else np.log(np.maximum(post, 1e-20))
    return b, a, abar, prev, logvar


def ref_reverse(eps, x, t, z, var_type, clip):
    b, a, abar, prev, logvar = ref_tables(var_type)
    out, x0s = [], []
    for i, ti in enumerate(t):
        x0 = x[i] / np.sqrt(abar[ti]) - np.sqrt(1 / abar[ti] - 1) * eps[i]
        if clip:
            x0 = np.clip(x0, -1, 1)
        mean = (b[ti] * np.sqrt(prev[ti]) * x0 + (1 - prev[ti]) * np.sqrt(a[ti]) * x[i]) / (1 - abar[ti])
        out.append(mean + (np.exp(0.5 * logvar[ti]) * z[i] if ti > 0 else 0))
        x0s.append(x0)
    return np.stack(out), np.stack(x0s)


def draws(n=4, shape=(5, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, *shape)) for _ in range(3)]


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("t", [[0, 0, 0, 0], [T - 1] * 4, [0, 1, 500, T - 1]])
def test_denoising_step_matches_float64_reference(var_type, clip, t):
    eps, x, z = draws()
    t = np.array(t, np.int32)
    coeffs = make_coefficients(DiffusionConfig(model_var_type=var_type))
    got, got_x0 = denoising_step(
        eps.astype(np.float32), x.astype(np.float32), t, z.astype(np.float32), coeffs, clip=clip
    )
    want, want_x0 = ref_reverse(eps, x, t, z, var_type, clip)
    np.testing.assert_allclose(got_x0, want_x0, rtol=1e-5, atol=2e-5 * (1 if clip else 200))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_no_noise_at_t0():
    eps, x, z = draws()
    coeffs = make_coefficients(DiffusionConfig())
    t = np.zeros(4, np.int32)
    a, _ = denoising_step(eps.astype(np.float32), x.astype(np.float32), t, z.astype(np.float32), coeffs)
    b, _ = denoising_step(eps.astype(np.float32), x.astype(np.float32), t, 0 * z.astype(np.float32), coeffs)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("t", [[0, 0, 0, 0], [T - 1] * 4, [3, 0, 999, 250]])
def test_forward_steps_match_reference(t):
    _, x, z = draws(seed=1)
    t = np.array(t, np.int32)
    b, a, abar, _, _ = ref_tables("fixedlarge")
    coeffs = make_coefficients(DiffusionConfig())
    got = diffusion_step(x.astype(np.float32), t, z.astype(np.float32), coeffs)
    want = np.sqrt(a[t])[:, None, None, None] * x + np.sqrt(b[t])[:, None, None, None] * z
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got = q_sample(x.astype(np.float32), t, z.astype(np.float32), coeffs)
    want = np.sqrt(abar[t])[:, None, None, None] * x + np.sqrt(1 - abar[t])[:, None, None, None] * z
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_q_sample_is_the_composition_of_forward_steps():
    """Many forward steps from x_0 have the law of q(x_t | x_0): check the variance."""
    coeffs = make_coefficients(DiffusionConfig())
    rng = np.random.default_rng(2)
    x0 = np.full((2000, 1, 1, 1), 0.5, np.float32)
    x = x0
    for t in range(300):
        x = diffusion_step(x, np.full(2000, t, np.int32), rng.normal(size=x.shape).astype(np.float32), coeffs)
    abar = float(coeffs.alphas_cumprod[299])
    assert abs(float(np.mean(x)) - 0.5 * abar**0.5) < 0.05
    assert abs(float(np.var(x)) - (1 - abar)) < 0.06


def ref_ddim(eps, x, abar, abar_prev, z, eta):
    """Song et al. 2021 eq. (12) with sigma of eq. (16), float64, x0 clipped, eps from it."""
    x0 = np.clip((x - np.sqrt(1 - abar) * eps) / np.sqrt(abar), -1, 1)
    eps = (x - np.sqrt(abar) * x0) / np.sqrt(1 - abar)
    sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
    return np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev - sigma**2) * eps + sigma * z


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [10, 1000])
def test_ddim_step_matches_formula(eta, steps):
    from ddpm_jax.coefficients import coefficients_float64
    from ddpm_jax.diffusion import ddim_step

    eps, x, z = draws(seed=3)
    cfg = DiffusionConfig()
    c64 = coefficients_float64(cfg, steps)
    coeffs = make_coefficients(cfg, steps)
    t = np.array([0, 1, steps // 2, steps - 1], np.int32)
    got, _ = ddim_step(eps.astype(np.float32), x.astype(np.float32), t, z.astype(np.float32), coeffs, eta=eta)
    r = lambda a: a[t][:, None, None, None]  # noqa: E731
    want = ref_ddim(eps, x, r(c64["alphas_cumprod"]), r(c64["alphas_cumprod_prev"]), z, eta)
    # Re-deriving eps divides by sqrt(1 - abar) (~0.014 at t = 1 of 1000): float32 loses ~1e-4 there.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)


def test_ddim_eta1_variance_is_the_ddpm_posterior_variance():
    """With eta = 1, sigma^2 equals beta tilde of the (respaced) process, eq. (16)."""
    from ddpm_jax.coefficients import coefficients_float64

    c = coefficients_float64(DiffusionConfig(model_var_type="fixedsmall"), 50)
    abar, prev = c["alphas_cumprod"], c["alphas_cumprod_prev"]
    sigma2 = (1 - prev) / (1 - abar) * (1 - abar / prev)
    np.testing.assert_allclose(sigma2, c["posterior_variance"], rtol=1e-10, atol=1e-15)
