"""Sampling loops: `lax.scan` over fixed-size chunks of steps, start traced.

Each chunk runs `chunk` iterations; iteration k is active while k < n_valid,
so one compiled chunk serves every `n_steps`, start step and seed. The noise
for sample i at step t is drawn from fold_in(fold_in(stream_key, i), t): it
depends only on (key, i, t), never on the batch or on how a chain is split.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from .coefficients import Coefficients
from .diffusion import diffusion_step
from .samplers import Sampler

# Independent streams of one user key, so x_T, the reverse noise and the
# forward noise never share values.
INIT, DENOISE, DIFFUSE = 0, 1, 2
BOUND = 3  # q_sample's noise in the variational bound (likelihood.py)
REPAINT = 4  # inpainting.py: the noise of each iteration of a jump schedule

# model_fn(params, x_t, model timesteps) -> the network's output (eps, v or x_0, as the config says)
ModelFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def per_sample_normal(key, stream: int, sample_ids, t, shape):
    """N(0, I) of `shape` per sample of `stream`: fold_in(fold_in(fold_in(key, stream), i), t)."""
    key = jax.random.fold_in(key, stream)

    def one(i):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), t), shape)

    return jax.vmap(one)(sample_ids)


# x_T's program is compiled at XLA's LLVM optimization level 1 (default 3): the same bits
# (tests/test_sampling.py), and a first picture waits less for it (in a fresh process, level 2
# took 0.3 s instead of 0.76 on the round-3 EPYC, level 1 0.24-0.26 s instead of level 2's 0.30
# on the round-3 Xeon: docs/benchmarks.md#time-to-the-first-sample).
@partial(jax.jit, static_argnames="shape", compiler_options={"xla_backend_optimization_level": 1})
def initial_noise(key, sample_ids, shape):
    """x_T for each sample id: (n, *shape) float32, a function of (key, i) only."""
    return per_sample_normal(key, INIT, sample_ids, 0, shape)


def run_chunk(step, carry, n_valid, chunk: int):
    """One compiled chunk: carry = step(carry, k) for k = 0 .. chunk-1 while
    k < n_valid (traced); later iterations are skipped by `lax.cond` (no model
    call), so one compilation serves every chain length and start."""

    def body(carry, k):
        return jax.lax.cond(k < n_valid, step, lambda c, k: c, carry, k), None

    carry, _ = jax.lax.scan(body, carry, jnp.arange(chunk))
    return carry


def denoise_chunk(
    model_fn: ModelFn,
    params,
    coeffs: Coefficients,
    x,
    pred_x0,
    start_step,
    n_valid,
    key,
    sample_ids,
    has_prev=False,
    *,
    chunk: int,
    sampler: Sampler,
    clip: bool = True,
):
    """Up to `chunk` reverse steps of `sampler` from x with `start_step` forward steps.

    Iteration k runs chain index t = start_step - 1 - k (the model sees
    coeffs.timesteps[t]) when k < n_valid. A multistep sampler also reads the
    carry's pred_x0 (the previous step's): iteration 0 has one when
    `has_prev` (a traced bool: a chain resumed with its pred_x0), later
    iterations always. Returns (x, pred_x0) after the last active step.
    """
    n = x.shape[0]

    def step(carry, k):
        x, prev_x0 = carry
        t = start_step - 1 - k
        tt = jnp.full((n,), t, jnp.int32)
        output = model_fn(params, x, coeffs.timesteps[tt])
        noise = per_sample_normal(key, DENOISE, sample_ids, t, x.shape[1:])
        return sampler.apply(
            output, x, tt, noise, coeffs, clip=clip, prev_x0=prev_x0, has_prev=jnp.logical_or(has_prev, k > 0)
        )

    return run_chunk(step, (x, pred_x0), n_valid, chunk)


def diffuse_chunk(coeffs: Coefficients, x, start_step, n_valid, key, sample_ids, *, chunk: int):
    """Up to `chunk` forward steps t = start_step + k, k < n_valid (eq. 2)."""
    n = x.shape[0]

    def step(x, k):
        t = start_step + k
        noise = per_sample_normal(key, DIFFUSE, sample_ids, t, x.shape[1:])
        return diffusion_step(x, jnp.full((n,), t, jnp.int32), noise, coeffs)

    return run_chunk(step, x, n_valid, chunk)
