"""Interpolation in the diffusion latent space (Ho et al. 2020, Sec. 4.4 and Fig. 8).

Two images are encoded to x_t and x'_t by q with the same noise, mixed as
(1 - lambda) x_t + lambda x'_t and decoded by the reverse process with its
noise fixed across lambda (`Diffusion.interpolate`). New samples blend two
x_T spherically instead (`Diffusion.interpolate_noise`): a linear mix of two
independent Gaussians shrinks their norm, a spherical one keeps it (the
interpolation of x_T in Song et al. 2021, DDIM, Sec. 5.3).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def check_lambdas(lambdas) -> np.ndarray:
    """A non-empty 1-D list of finite weights in [0, 1] -> (k,) float32."""
    lam = np.asarray(lambdas, dtype=np.float64)
    if lam.ndim == 0:
        lam = lam[None]
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"lambdas must be a non-empty 1-D list of weights, got shape {lam.shape}")
    if not np.isfinite(lam).all() or lam.min() < 0.0 or lam.max() > 1.0:
        raise ValueError(
            f"lambdas must lie in [0, 1] (0: image a, 1: image b), got {lam.tolist()}; e.g. numpy.linspace(0, 1, k)"
        )
    return lam.astype(np.float32)


def _weights(lambdas):
    return jnp.asarray(lambdas, jnp.float32)[:, None, None, None]


def lerp(a, b, lambdas):
    """(1 - lambda) a + lambda b for each lambda (Sec. 4.4): (H, W, C) pair -> (k, H, W, C)."""
    lam = _weights(lambdas)
    return (1.0 - lam) * a + lam * b


def slerp(a, b, lambdas):
    """Spherical interpolation of a and b (H, W, C) for each lambda -> (k, H, W, C).

    sin((1 - lambda) theta) / sin(theta) a + sin(lambda theta) / sin(theta) b,
    theta the angle between a and b flattened; linear when they are parallel.
    """
    lam = _weights(lambdas)
    cos = jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(theta)
    parallel = sin < 1e-6
    wa = jnp.where(parallel, 1.0 - lam, jnp.sin((1.0 - lam) * theta) / jnp.where(parallel, 1.0, sin))
    wb = jnp.where(parallel, lam, jnp.sin(lam * theta) / jnp.where(parallel, 1.0, sin))
    return wa * a + wb * b
