"""The variational bound in bits/dim and progressive coding (Ho et al. 2020, eq. 5, sec. 4.3).

Computed as the TF release does (`diffusion_tf/diffusion_utils_2.py`: `normal_kl`,
`_vb_terms_bpd`, `_prior_bpd`, `calc_bpd_loop`; `diffusion_tf/utils.py`:
`approx_standard_normal_cdf`, `discretized_gaussian_log_likelihood`):

    L = L_T + sum_{t=1}^{T-1} L_t + L_0                                     (eq. 5)

With the 0-based chain index t of `coefficients` (x_t has had t + 1 forward
steps), the term at t > 0 is the paper's L_t = KL(q(x_{t-1} | x_t, x_0) ||
p(x_{t-1} | x_t)), the term at t = 0 the decoder's L_0 = -log p(x_0 | x_1)
(eq. 13), and the prior L_T = KL(q(x_T | x_0) || N(0, I)); each is averaged
over the image's dimensions and given in bits (/ ln 2). Images are on the
256-level grid scaled to [-1, 1], NHWC float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .coefficients import Coefficients
from .diffusion import at, model_prediction, q_posterior_mean, q_sample
from .sampling import BOUND, ModelFn, per_sample_normal, run_chunk

LN2 = math.log(2.0)
BIN = 1.0 / 255.0  # half the gap between two levels of the grid on [-1, 1]


class Bound(NamedTuple):
    """The bound of each of n images, in bits/dim.

    `terms` (n, T) float32: terms[:, t] is L_t, terms[:, 0] the decoder NLL L_0;
    `prior` (n,) is L_T; `total` (n,) float64 = terms summed + prior. `mse`
    (n, T): mean squared error of the x_0 predicted from x_t, on [-1, 1].
    """

    total: np.ndarray
    terms: np.ndarray
    prior: np.ndarray
    mse: np.ndarray


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the release's approximation,
    written as the equal sigmoid(2 sqrt(2/pi) (...)), which keeps float32's relative
    precision in the lower tail."""
    return jax.nn.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) per element under N(means, e^(2 log_scales)) discretized to the grid (eq. 13).

    Each level x of the 256-level grid on [-1, 1] owns the bin [x - 1/255,
    x + 1/255]; the end bins are open (x < -0.999 takes (-inf, x + 1/255],
    x > 0.999 takes [x - 1/255, inf)). Probabilities are floored at 1e-12.
    The approximate CDF is odd about 1/2 (Phi(-z) = 1 - Phi(z)), so a bin
    above the mean is measured in the upper tail: the same numbers as the
    release's, without float32's cancellation in 1 - Phi far from the mean.
    """
    inv_std = jnp.exp(-log_scales)
    lo, hi = inv_std * (x - means - BIN), inv_std * (x - means + BIN)
    cdf = approx_standard_normal_cdf
    mass = jnp.where(x > means, cdf(-lo) - cdf(-hi), cdf(hi) - cdf(lo))
    return jnp.where(
        x < -0.999, _floored_log(cdf(hi)), jnp.where(x > 0.999, _floored_log(cdf(-lo)), _floored_log(mass))
    )


def _floored_log(p):
    return jnp.log(jnp.maximum(p, 1e-12))


def _mean_flat(x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def vb_term_bpd(output, x0, x_t, t, coeffs: Coefficients, clip=True):
    """The term of the bound at 0-based t for a batch, given the model's output at x_t.

    The model's p(x_{t-1} | x_t) has the posterior mean of eq. (7) at the
    predicted x_0 (`model_prediction`, clipped to [-1, 1] when `clip`) and the release's
    log-variance (`model_log_variance_clipped`); the true posterior has the
    clipped log-variance. Returns (term, mse), each (n,): the KL in bits/dim
    where t > 0, the decoder NLL where t == 0; the MSE of the predicted x_0.
    """
    _, pred_x0 = model_prediction(output, x_t, t, coeffs, clip)
    model_mean = q_posterior_mean(pred_x0, x_t, t, coeffs)
    model_logvar = at(coeffs.model_log_variance_clipped, t)
    kl = normal_kl(
        q_posterior_mean(x0, x_t, t, coeffs), at(coeffs.posterior_log_variance_clipped, t), model_mean, model_logvar
    )
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    term = jnp.where(t == 0, _mean_flat(nll), _mean_flat(kl)) / LN2
    return term, _mean_flat((pred_x0 - x0) ** 2)


@jax.jit
def prior_bpd(x0, coeffs: Coefficients):
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, (n,); q(x_T | x_0) from eq. (4)."""
    mean = coeffs.sqrt_alphas_cumprod[-1] * x0
    logvar = jnp.log1p(-coeffs.alphas_cumprod[-1])
    return _mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / LN2


def bound_chunk(
    model_fn: ModelFn, params, coeffs: Coefficients, x0, start, key, sample_ids, *, chunk: int, clip: bool = True
):
    """The terms at t = start .. start + chunk - 1, one `lax.scan` (jit it, `chunk` static).

    x_t = q_sample(x_0, t, noise) with the noise of (key, sample id, t), so an
    image's terms do not depend on its batch or on the devices. Steps t >= T
    are skipped (no model call, zeros), so one compilation serves every start.
    Returns (terms, mse), each (chunk, n).
    """
    n, T = x0.shape[0], coeffs.num_timesteps
    zero = jnp.zeros((chunk, n), jnp.float32)

    def term(carry, k):
        t = start + k
        tt = jnp.full((n,), t, jnp.int32)
        x_t = q_sample(x0, tt, per_sample_normal(key, BOUND, sample_ids, t, x0.shape[1:]), coeffs)
        term, mse = vb_term_bpd(model_fn(params, x_t, coeffs.timesteps[tt]), x0, x_t, tt, coeffs, clip=clip)
        return carry[0].at[k].set(term), carry[1].at[k].set(mse)

    terms, mse = run_chunk(term, (zero, zero), T - start, chunk)
    return terms, mse


def variational_bound(
    chunk_fn: Callable, params, coeffs: Coefficients, x0, key, sample_ids, *, chunk: int, clip: bool = True
) -> Bound:
    """The whole bound of a batch (the release's `calc_bpd_loop`), T / chunk calls of `chunk_fn`.

    `chunk_fn` is `bound_chunk` jitted with its model_fn and `chunk` bound.
    """
    T = coeffs.num_timesteps
    # Dispatch every chunk before reading any back, so the device never waits on the host.
    parts = [chunk_fn(params, coeffs, x0, start, key, sample_ids, clip=clip) for start in range(0, T, chunk)]
    terms = np.concatenate([np.asarray(p[0]) for p in parts])[:T].T
    mse = np.concatenate([np.asarray(p[1]) for p in parts])[:T].T
    prior = np.asarray(prior_bpd(x0, coeffs))
    return Bound(terms.sum(axis=1, dtype=np.float64) + prior, terms, prior, mse)


def grid_images(x0, image_shape) -> np.ndarray:
    """Validated images for the bound: (n, *image_shape) uint8, or floats in [-1, 1]
    on the 8-bit grid (k / 127.5 - 1); float32 in [-1, 1] out."""
    want = f"(n, H, W, C) = (n, {', '.join(map(str, image_shape))})"
    if not hasattr(x0, "shape") or not hasattr(x0, "dtype"):
        raise TypeError(f"x0 must be an array {want}, got {type(x0).__name__}")
    if x0.ndim != 4 or tuple(x0.shape[1:]) != tuple(image_shape) or x0.shape[0] < 1:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; this model expects {want}, n >= 1 (one image: x0[None])")
    x = np.asarray(x0)
    if x.dtype == np.uint8:
        return (x / 127.5 - 1.0).astype(np.float32)  # float64 then one cast, as below
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x0 has dtype {x.dtype}; expected uint8 images or floats in [-1, 1]")
    if not np.isfinite(x).all():
        raise ValueError("x0 has NaN or infinite values; float images must be in [-1, 1]")
    if x.min() < -1.0 or x.max() > 1.0:
        raise ValueError(f"x0 has values in [{x.min():.4g}, {x.max():.4g}]; float images must be in [-1, 1]")
    levels = (x.astype(np.float64) + 1.0) * 127.5
    off = np.abs(levels - np.rint(levels)).max()
    if off > 1e-3:
        raise ValueError(
            f"x0 is not on the 8-bit grid (a value lies {off / 127.5:.3g} from the nearest "
            "k / 127.5 - 1); the bound's decoder is discrete: pass uint8 images, e.g. "
            "Diffusion.to_uint8(x0, clip=True)"
        )
    return (np.rint(levels) / 127.5 - 1.0).astype(np.float32)


class RateDistortion(NamedTuple):
    """Progressive coding (sec. 4.3, Table 4) at each reverse time r = T - t + 1, r = 1..T.

    `rate` (bits/dim): what has been sent once x_t is known, L_T + L_{T-1} + ...
    + L_t, averaged over the images; `distortion`: the RMSE on [0, 255] of the
    x_0 predicted from x_t, over all images and dimensions.
    """

    reverse_time: np.ndarray
    rate: np.ndarray
    distortion: np.ndarray


def rate_distortion(bound: Bound) -> RateDistortion:
    """Rate and distortion of `bound`'s images against reverse time (1, ..., T)."""
    terms = np.asarray(bound.terms, np.float64)
    T = terms.shape[1]
    # after[:, s] = terms[:, s+1:].sum(): for the paper's t = s + 1 the rate
    # holds L_T and L_{T-1} ... L_t, i.e. terms[t:], and x_t sits at index t - 1.
    after = np.cumsum(terms[:, ::-1], axis=1)[:, ::-1] - terms
    rate = (np.asarray(bound.prior, np.float64)[:, None] + after).mean(axis=0)
    distortion = 127.5 * np.sqrt(np.asarray(bound.mse, np.float64).mean(axis=0))
    reverse_time = T - np.arange(T)  # index s: the paper's t = s + 1, r = T - t + 1
    return RateDistortion(reverse_time[::-1], rate[::-1], distortion[::-1])
