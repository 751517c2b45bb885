import dataclasses

import numpy as np
import pytest

from ddpm_jax.coefficients import Coefficients, coefficients_float64, make_coefficients
from ddpm_jax.config import DiffusionConfig
from ddpm_jax.schedule import SCHEDULES

CFG = DiffusionConfig()


def test_float32_is_one_cast_of_float64():
    c64 = coefficients_float64(CFG)
    c32 = make_coefficients(CFG)
    for f in dataclasses.fields(Coefficients):
        a = np.asarray(getattr(c32, f.name))
        want = np.int32 if f.name == "timesteps" else np.float32
        assert a.dtype == want and a.shape == (1000,)
        np.testing.assert_array_equal(a, c64[f.name].astype(want))
    np.testing.assert_array_equal(c32.timesteps, np.arange(1000))


@pytest.mark.parametrize("steps", [1, 10, 37, 999])
def test_respaced_process_keeps_the_marginals(steps):
    """Respacing keeps abar at the visited steps (so q(x_t | x_0) is unchanged)."""
    full = coefficients_float64(CFG)
    sub = coefficients_float64(CFG, steps)
    tau = sub["timesteps"]
    assert len(tau) == steps and tau[-1] == 999 and (steps == 1 or tau[0] == 0)
    assert np.all(np.diff(tau) > 0)
    np.testing.assert_allclose(sub["alphas_cumprod"], full["alphas_cumprod"][tau], rtol=1e-10)
    np.testing.assert_allclose(sub["alphas_cumprod_prev"][1:], full["alphas_cumprod"][tau[:-1]], rtol=1e-10)


def test_respacing_out_of_range():
    with pytest.raises(ValueError, match="steps=1001 is out of range"):
        coefficients_float64(CFG, 1001)


def test_posterior_mean_eq7_equals_eq11_unclipped():
    """coef1 * x0(eps) + coef2 * x_t == 1/sqrt(alpha) (x_t - beta/sqrt(1-abar) eps)."""
    c = coefficients_float64(CFG)
    rng = np.random.default_rng(0)
    x, eps = rng.normal(size=(2, 1000))
    x0 = c["sqrt_recip_alphas_cumprod"] * x - c["sqrt_recipm1_alphas_cumprod"] * eps
    eq7 = c["posterior_mean_coef1"] * x0 + c["posterior_mean_coef2"] * x
    b, a, abar = c["betas"], c["alphas"], c["alphas_cumprod"]
    eq11 = (x - b / np.sqrt(1 - abar) * eps) / np.sqrt(a)
    np.testing.assert_allclose(eq7, eq11, rtol=1e-9, atol=1e-9)


def test_identities():
    c = coefficients_float64(CFG)
    abar = c["alphas_cumprod"]
    np.testing.assert_allclose(abar, np.cumprod(1 - c["betas"]), rtol=1e-15)
    np.testing.assert_allclose(c["alphas_cumprod_prev"][1:], abar[:-1])
    assert c["alphas_cumprod_prev"][0] == 1.0
    np.testing.assert_allclose(c["sqrt_alphas_cumprod"] ** 2 + c["sqrt_one_minus_alphas_cumprod"] ** 2, 1.0)
    np.testing.assert_allclose(c["sqrt_recip_alphas_cumprod"] * c["sqrt_alphas_cumprod"], 1.0)
    # beta tilde = (1 - abar_prev) / (1 - abar) * beta, eq. (7); 0 at t = 0.
    assert c["posterior_variance"][0] == 0.0
    assert np.all(c["posterior_variance"][1:] < c["betas"][1:])


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_model_log_variance(var_type):
    c = coefficients_float64(dataclasses.replace(CFG, model_var_type=var_type))
    if var_type == "fixedlarge":
        np.testing.assert_allclose(c["model_log_variance"][1:], np.log(c["betas"][1:]))
        assert c["model_log_variance"][0] == np.log(c["posterior_variance"][1])
    else:
        np.testing.assert_allclose(c["model_log_variance"][1:], np.log(c["posterior_variance"][1:]))
        assert c["model_log_variance"][0] == np.log(1e-20)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_gives_finite_tables(name):
    c = make_coefficients(DiffusionConfig(beta_schedule=name, model_var_type="fixedsmall"))
    for f in dataclasses.fields(c):
        assert np.all(np.isfinite(np.asarray(getattr(c, f.name)))), f.name


def test_jsd_last_step_predicts_zero_not_nan():
    c = coefficients_float64(DiffusionConfig(beta_schedule="jsd"))
    assert c["alphas_cumprod"][-1] == 0.0
    assert c["sqrt_recip_alphas_cumprod"][-1] == 0.0 and c["sqrt_recipm1_alphas_cumprod"][-1] == 0.0


def test_unknown_model_var_type():
    with pytest.raises(ValueError, match="learned.*fixedlarge, fixedsmall"):
        DiffusionConfig(model_var_type="learned")
