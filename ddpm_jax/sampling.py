"""Sampling loops: `lax.scan` over fixed-size chunks of steps, start traced.

Each chunk runs `chunk` iterations; iteration k is active while k < n_valid,
so one compiled chunk serves every `n_steps`, start step and seed. The noise
for sample i at step t is drawn from fold_in(fold_in(stream_key, i), t): it
depends only on (key, i, t), never on the batch or on how a chain is split.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from .coefficients import Coefficients
from .diffusion import denoising_step, diffusion_step

# Independent streams of one user key, so x_T, the reverse noise and the
# forward noise never share values.
_INIT, _DENOISE, _DIFFUSE = 0, 1, 2
_BOUND = 3  # q_sample's noise in the variational bound (likelihood.py)
_REPAINT = 4  # inpainting.py: the noise of each iteration of a jump schedule

EpsFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def _per_sample_normal(key, sample_ids, t, shape):
    """N(0, I) of `shape` per sample, from fold_in(fold_in(key, i), t)."""

    def one(i):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), t), shape)

    return jax.vmap(one)(sample_ids)


@partial(jax.jit, static_argnames="shape")
def initial_noise(key, sample_ids, shape):
    """x_T for each sample id: (n, *shape) float32, a function of (key, i) only."""
    return _per_sample_normal(jax.random.fold_in(key, _INIT), sample_ids, 0, shape)


def bound_noise(key, sample_ids, t, shape):
    """The noise of x_t ~ q(x_t | x_0) for the bound at step t: a function of (key, i, t) only."""
    return _per_sample_normal(jax.random.fold_in(key, _BOUND), sample_ids, t, shape)


def denoise_chunk(eps_fn: EpsFn, params, coeffs: Coefficients, x, pred_x0, start_step,
                  n_valid, key, sample_ids, has_prev=False, *, chunk: int, clip: bool = True,
                  step_fn=denoising_step, multistep: bool = False):
    """Up to `chunk` reverse steps from x with `start_step` forward steps.

    Iteration k runs chain index t = start_step - 1 - k (the model sees
    coeffs.timesteps[t]) when k < n_valid and is skipped (no model call)
    otherwise. `step_fn` is `denoising_step` or a `ddim_step` partial, or with
    `multistep` a `dpm_solver_pp_step` partial, which also reads the carry's
    pred_x0 (the previous step's): iteration 0 has one when `has_prev` (a
    traced bool: a chain resumed with its pred_x0), later iterations always.
    Returns (x, pred_x0) after the last active step.
    """
    stream = jax.random.fold_in(key, _DENOISE)
    n = x.shape[0]

    def step(carry, k):
        x, prev_x0 = carry
        t = start_step - 1 - k
        tt = jnp.full((n,), t, jnp.int32)
        eps = eps_fn(params, x, coeffs.timesteps[tt])
        noise = _per_sample_normal(stream, sample_ids, t, x.shape[1:])
        if multistep:
            return step_fn(eps, x, tt, noise, coeffs, clip=clip, prev_x0=prev_x0,
                           has_prev=jnp.logical_or(has_prev, k > 0))
        return step_fn(eps, x, tt, noise, coeffs, clip=clip)

    def body(carry, k):
        carry = jax.lax.cond(k < n_valid, step, lambda c, k: c, carry, k)
        return carry, None

    (x, pred_x0), _ = jax.lax.scan(body, (x, pred_x0), jnp.arange(chunk))
    return x, pred_x0


def diffuse_chunk(coeffs: Coefficients, x, start_step, n_valid, key, sample_ids, *, chunk: int):
    """Up to `chunk` forward steps t = start_step + k, k < n_valid (eq. 2)."""
    stream = jax.random.fold_in(key, _DIFFUSE)
    n = x.shape[0]

    def step(x, t):
        noise = _per_sample_normal(stream, sample_ids, t, x.shape[1:])
        return diffusion_step(x, jnp.full((n,), t, jnp.int32), noise, coeffs)

    def body(x, k):
        return jax.lax.cond(k < n_valid, step, lambda x, t: x, x, start_step + k), None

    x, _ = jax.lax.scan(body, x, jnp.arange(chunk))
    return x
