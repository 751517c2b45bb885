"""Pure step functions of the forward and reverse processes (Ho et al. 2020).

Arrays: x, noise and the network's `output` are NHWC float32 with images in
[-1, 1]; t is int32 of shape (n,), one 0-based timestep per sample; `coeffs` is
a `Coefficients`. Every step reads `output` through `model_prediction`, so it
works for each prediction type (eps, v, x_0) of the config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .coefficients import Coefficients


def at(table: jax.Array, t: jax.Array) -> jax.Array:
    """table[t] shaped (n, 1, 1, 1) to broadcast over NHWC: t int32 (n,) chain indices."""
    return table[t][:, None, None, None]


def q_sample(x0, t, noise, coeffs: Coefficients):
    """x_t ~ q(x_t | x_0), eq. (4): sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
    return at(coeffs.sqrt_alphas_cumprod, t) * x0 + at(coeffs.sqrt_one_minus_alphas_cumprod, t) * noise


def diffusion_step(x, t, noise, coeffs: Coefficients):
    """One forward step q(x_{t+1} | x_t), eq. (2), with beta at index t.

    `x` has had t forward steps; the result has had t + 1 (the port's indexing).
    """
    return at(coeffs.sqrt_alphas, t) * x + at(coeffs.sqrt_betas, t) * noise


def model_prediction(output, x, t, coeffs: Coefficients, clip=True):
    """(eps, x_0) that the network's `output` at x_t means, by the config's prediction type.

    eps, v = alpha eps - sigma x_0 or x_0 (Salimans & Ho 2022, Sec. 4), read
    from the tables of `coefficients._prediction_tables`. With `clip`, x_0 is
    clipped to [-1, 1] (as the release does) and eps re-derived from it (eq. 4
    solved for eps), so the two still describe the same x_t.
    """
    x0 = at(coeffs.x0_from_x, t) * x + at(coeffs.x0_from_output, t) * output
    if not clip:
        return at(coeffs.eps_from_output, t) * output + at(coeffs.eps_from_x, t) * x, x0
    x0 = jnp.clip(x0, -1.0, 1.0)
    abar = at(coeffs.alphas_cumprod, t)
    return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar), x0


def q_posterior_mean(x0, x, t, coeffs: Coefficients):
    """Mean of q(x_{t-1} | x_t, x_0), eq. (7)."""
    return at(coeffs.posterior_mean_coef1, t) * x0 + at(coeffs.posterior_mean_coef2, t) * x


def denoising_step(output, x, t, noise, coeffs: Coefficients, clip=True):
    """One reverse step p(x_{t-1} | x_t) given the model's output (Alg. 2 line 4).

    Computed as the release does: the predicted x_0 (`model_prediction`,
    clipped to [-1, 1] when `clip`), then the posterior mean of eq. (7), which
    equals eq. (11) unclipped. No noise is added where t == 0.
    Returns (x_{t-1}, predicted x_0).
    """
    _, pred_x0 = model_prediction(output, x, t, coeffs, clip)
    mean = q_posterior_mean(pred_x0, x, t, coeffs)
    sigma = jnp.where(t > 0, jnp.exp(0.5 * coeffs.model_log_variance[t]), 0.0)
    return mean + sigma[:, None, None, None] * noise, pred_x0


def ddim_step(output, x, t, noise, coeffs: Coefficients, clip=True, *, eta=0.0):
    """One DDIM step from chain index t to t-1 (Song et al. 2021, eq. 12).

    sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev), eq. (16):
    eta = 0 is deterministic, eta = 1 matches the DDPM posterior variance.
    On a respaced `coeffs`, abar_prev is abar at the previous visited step.
    eps and x_0 come from `model_prediction`: with `clip`, x_0 is clipped to
    [-1, 1] and eps re-derived from it, so both terms of eq. 12 use the same
    prediction. Returns (x_{t-1}, predicted x_0).
    """
    abar, abar_prev = at(coeffs.alphas_cumprod, t), at(coeffs.alphas_cumprod_prev, t)
    eps, pred_x0 = model_prediction(output, x, t, coeffs, clip)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(abar_prev) * pred_x0 + direction + sigma * noise, pred_x0


def dpm_solver_pp_step(output, x, t, noise, coeffs: Coefficients, clip=True, *, prev_x0, has_prev, sde=False):
    """One DPM-Solver++(2M) step from chain index t to t-1 (Lu et al. 2022, Alg. 2).

    With the predicted x_0 (`model_prediction`; clipped to [-1, 1] when `clip`), the
    previous step's prediction `prev_x0` and h, r of `Coefficients`:

        D = (1 + 1/(2r)) x_0 - 1/(2r) prev_x0
        x_{t-1} = (sigma_{t-1} / sigma_t) x_t + alpha_{t-1} (1 - e^{-h}) D

    First order (D = x_0, DPM-Solver++1, which is DDIM) where the table's 1/(2r)
    is 0 (the chain's first step; the last, which returns x_0 itself) or when
    `has_prev` (a traced bool) says there is no previous prediction. With `sde`
    it is SDE-DPM-Solver++(2M), as diffusers' `DPMSolverMultistepScheduler`
    with algorithm_type "sde-dpmsolver++":
    x_{t-1} = (sigma_{t-1}/sigma_t) e^{-h} x_t + alpha_{t-1} (1 - e^{-2h}) D
    + sigma_{t-1} sqrt(1 - e^{-2h}) noise. Returns (x_{t-1}, x_0).
    """
    _, pred_x0 = model_prediction(output, x, t, coeffs, clip)
    half_inv_r = jnp.where(has_prev, at(coeffs.dpm_half_inv_r, t), 0.0)
    d = pred_x0 + half_inv_r * (pred_x0 - prev_x0)
    sigma_next = at(coeffs.sqrt_one_minus_alphas_cumprod_prev, t)
    alpha_next = at(coeffs.sqrt_alphas_cumprod_prev, t)
    ratio = sigma_next / at(coeffs.sqrt_one_minus_alphas_cumprod, t)
    q = at(coeffs.dpm_one_minus_exp_neg_h, t)
    if not sde:
        return ratio * x + alpha_next * q * d, pred_x0
    q2 = q * (2.0 - q)  # 1 - e^{-2h}, without cancellation
    return ratio * (1.0 - q) * x + alpha_next * q2 * d + sigma_next * jnp.sqrt(q2) * noise, pred_x0
