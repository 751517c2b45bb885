"""Every quantity derived from the betas (paper eqs. 4, 7, 15; docs/reference.md §1),
computed once in float64, and what the model's output means (its prediction type).

`Coefficients` is a frozen pytree of float32 arrays of length T, so it can be
passed to jitted functions as an argument rather than baked in as constants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import numpy as np

from .config import DiffusionConfig
from .schedule import get_beta_schedule


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Coefficients:
    """Per-step tables of shape (S,): float32, but `timesteps` int32.

    Index i is 0-based along the chain. For the full process S = T and
    timesteps[i] = i; for a respaced one (Nichol & Dhariwal 2021, sec. 4) the
    chain visits the model's timesteps[i] and the betas are re-derived from
    abar at those steps, so every step function works on it unchanged.
    """

    timesteps: jax.Array  # the model's t at chain index i
    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas: jax.Array  # forward step, q(x_{t+1} | x_t)
    sqrt_betas: jax.Array
    sqrt_alphas_cumprod: jax.Array  # closed form, eq. (4)
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array  # x_0 from eps, eq. (15)
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array  # beta tilde, eq. (7)
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    model_log_variance: jax.Array  # log sigma_t^2 of the reverse step
    # DPM-Solver++ (Lu et al. 2022): alpha = sqrt(abar), sigma = sqrt(1 - abar),
    # lambda = log(alpha / sigma); "next" is the step the chain moves to (chain
    # index i - 1, or x_0 itself with sigma = 0 from index 0).
    sqrt_alphas_cumprod_prev: jax.Array  # alpha_next; 1 at index 0
    sqrt_one_minus_alphas_cumprod_prev: jax.Array  # sigma_next; 0 at index 0
    dpm_one_minus_exp_neg_h: jax.Array  # 1 - e^{-h}, h = lambda_next - lambda; 1 at index 0
    dpm_half_inv_r: jax.Array  # 1 / (2 r), r = h_{i+1} / h_i (Alg. 2); 0 where first order
    # The variational bound's variances, as the release's diffusion_utils_2.py
    # computes them: the t = 0 entry (a posterior variance of 0) is replaced by
    # the t = 1 one, so every log is finite (bits/dim only, never sampling).
    posterior_log_variance_clipped: jax.Array  # log beta tilde, eq. (7)
    model_log_variance_clipped: jax.Array  # log sigma_t^2 of p(x_{t-1} | x_t) in the bound
    # The network's output o at x_t, read by the config's prediction type
    # (`_prediction_tables`): eps = eps_from_output o + eps_from_x x_t,
    # x_0 = x0_from_output o + x0_from_x x_t; its training target is
    # target_from_eps eps + target_from_x0 x_0.
    eps_from_output: jax.Array
    eps_from_x: jax.Array
    x0_from_output: jax.Array
    x0_from_x: jax.Array
    target_from_eps: jax.Array
    target_from_x0: jax.Array

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def respaced_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """`steps` model timesteps evenly spread over [0, T-1], ascending; T-1 always in."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps={steps} is out of range; expected 1 <= steps <= {num_timesteps}")
    return np.floor(np.linspace(num_timesteps - 1, 0, steps)[::-1] + 0.5).astype(np.int64)


def linspace_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """`steps` model timesteps as diffusers' `timestep_spacing="linspace"` picks them, ascending.

    round(linspace(0, T-1, steps+1)) without its 0: T-1 is in, the lowest is
    about (T-1)/steps, and the chain's last step goes from there to x_0
    (`DPMSolverMultistepScheduler.set_timesteps`; numpy's round, half to even).
    Beyond T-1 steps the rounding would repeat timesteps, where h = 0.
    """
    if not 1 <= steps <= num_timesteps - 1:
        raise ValueError(
            f"steps={steps} is out of range; expected 1 <= steps <= {num_timesteps - 1} "
            "with linspace timesteps (the DPM-Solver++ samplers)"
        )
    return np.linspace(0, num_timesteps - 1, steps + 1).round()[1:].astype(np.int64)


def trailing_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """`steps` model timesteps round((i + 1) T / S) - 1, ascending: diffusers' "trailing" spacing.

    The grid t = i/S of Salimans & Ho 2022 (Alg. 2) on the T-step process: T-1 is in and the
    last step goes from about T/S - 1 to x_0. Halving S keeps every other timestep (the odd
    chain indices), so a chain of S/2 steps lies on the chain of S: what distillation needs.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps={steps} is out of range; expected 1 <= steps <= {num_timesteps}")
    return np.round(np.arange(1, steps + 1) * num_timesteps / steps).astype(np.int64) - 1


SPACINGS = {"even": respaced_timesteps, "linspace": linspace_timesteps, "trailing": trailing_timesteps}


def _dpm_solver_tables(abar: np.ndarray, abar_prev: np.ndarray) -> dict[str, np.ndarray]:
    """The DPM-Solver++ step sizes (Lu et al. 2022, Alg. 2) between the visited steps.

    lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2; h_i = lambda(abar_prev_i) - lambda(abar_i)
    is +inf at index 0 (sigma_next = 0), where 1 - e^{-h} = 1. r_i = h_{i+1} / h_i
    relates step i to the one before it in the reverse chain (index i + 1). The
    first step (index S-1) and the last (index 0, to sigma = 0) are first order,
    as in diffusers with lower_order_final and final_sigmas_type="zero": 1/(2r) = 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = 0.5 * (np.log(abar) - np.log1p(-abar))
        lam_next = 0.5 * (np.log(abar_prev) - np.log1p(-abar_prev))
        h = lam_next - lam
        half_inv_r = np.zeros_like(h)
        half_inv_r[1:-1] = h[1:-1] / (2.0 * h[2:])
    return dict(
        sqrt_alphas_cumprod_prev=np.sqrt(abar_prev),
        sqrt_one_minus_alphas_cumprod_prev=np.sqrt(1.0 - abar_prev),
        dpm_one_minus_exp_neg_h=-np.expm1(-h),
        dpm_half_inv_r=half_inv_r,
    )


def _prediction_tables(prediction_type: str, abar: np.ndarray, recip: np.ndarray, recipm1: np.ndarray):
    """The network's output o as (eps, x_0), and the o it is trained to give, per step.

    With alpha = sqrt(abar), sigma = sqrt(1 - abar) (x_t = alpha x_0 + sigma eps, eq. 4):
    "eps": o = eps, x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (eq. 15);
    "v": o = v = alpha eps - sigma x_0, so eps = alpha v + sigma x_t and
    x_0 = alpha x_t - sigma v (Salimans & Ho 2022, Sec. 4);
    "x0": o = x_0, eps = (x_t - alpha x_0) / sigma. Each is linear in (o, x_t),
    so a step reads any prediction type from these tables alone.
    """
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    one, zero = np.ones_like(abar), np.zeros_like(abar)
    rows = {
        "eps": (one, zero, -np.sqrt(recipm1), np.sqrt(recip), one, zero),
        "v": (alpha, sigma, -sigma, alpha, alpha, -sigma),
        "x0": (-alpha / sigma, 1.0 / sigma, one, zero, zero, one),
    }[prediction_type]
    names = ("eps_from_output", "eps_from_x", "x0_from_output", "x0_from_x", "target_from_eps", "target_from_x0")
    return dict(zip(names, rows))


def coefficients_float64(
    config: DiffusionConfig, steps: int | None = None, spacing: str = "even"
) -> dict[str, np.ndarray]:
    """All tables of `Coefficients` in float64 numpy (the reference precision).

    With `steps` < T the chain is respaced: beta_i = 1 - abar[tau_i] / abar[tau_{i-1}].
    `spacing` picks tau: "even" (`respaced_timesteps`, T-1 and 0 in),
    "linspace" (`linspace_timesteps`, diffusers' DPM-Solver++ default) or
    "trailing" (`trailing_timesteps`, a distilled model's chain).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    full = get_beta_schedule(
        config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        num_diffusion_timesteps=config.num_diffusion_timesteps,
    )
    T = len(full)
    timesteps = SPACINGS[spacing](T, T if steps is None else steps)
    if len(timesteps) == T:
        betas = full
    else:
        abar_full = np.cumprod(1.0 - full)[timesteps]
        betas = 1.0 - abar_full / np.append(1.0, abar_full[:-1])
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        # Where abar == 0 (the jsd schedule's last step) x_t holds no trace of
        # x_0; predicting x_0 = 0 there beats dividing by zero.
        recip = np.where(abar > 0, 1.0 / abar, 0.0)
        recipm1 = np.where(abar > 0, 1.0 / abar - 1.0, 0.0)
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    # A one-step chain has no t = 1 to borrow from: its beta stands in.
    clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else betas
    if config.model_var_type == "fixedlarge":
        # sigma^2 = beta, with the t = 0 entry borrowed from beta tilde_1.
        log_var = np.log(np.append(posterior_variance[1:2], betas[1:]) if len(betas) > 1 else betas)
    else:
        log_var = np.log(np.maximum(posterior_variance, 1e-20))
    return dict(
        timesteps=timesteps,
        betas=betas,
        alphas=alphas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas=np.sqrt(alphas),
        sqrt_betas=np.sqrt(betas),
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(recip),
        sqrt_recipm1_alphas_cumprod=np.sqrt(recipm1),
        posterior_variance=posterior_variance,
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        model_log_variance=log_var,
        **_dpm_solver_tables(abar, abar_prev),
        posterior_log_variance_clipped=np.log(clipped),
        # fixedlarge's t = 0 entry is already borrowed; fixedsmall is beta tilde.
        model_log_variance_clipped=log_var if config.model_var_type == "fixedlarge" else np.log(clipped),
        **_prediction_tables(config.prediction_type, abar, recip, recipm1),
    )


def make_coefficients(config: DiffusionConfig, steps: int | None = None, spacing: str = "even") -> Coefficients:
    """The float64 tables cast once to float32 (timesteps to int32), on the host and
    put on the device as they are: `jnp.asarray` would compile a program per chain length."""
    tables = coefficients_float64(config, steps, spacing)
    return Coefficients(
        **{
            f.name: jax.device_put(np.asarray(tables[f.name], np.int32 if f.name == "timesteps" else np.float32))
            for f in dataclasses.fields(Coefficients)
        }
    )
