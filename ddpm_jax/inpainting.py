"""Inpainting by RePaint (Lugmayr et al. 2022): pure steps, the jump schedule, a chunked scan.

The mask is 1 where the image is kept (known) and 0 where it is filled, as in
the paper's m and diffusers' `RePaintScheduler`. Each iteration of the time
schedule is a row (t, direction) of chain indices (0-based, as in
`diffusion.py`): REVERSE takes x with t + 1 forward steps to t by
`repaint_step` (Alg. 1 lines 4-8); FORWARD re-noises x with t forward steps
to t + 1, the "undo" of Alg. 1 line 10, which is the forward step of eq. (2)
of Ho et al. 2020 (`diffusion.diffusion_step`). The noise of sample i at
iteration k of the schedule comes from fold_in(fold_in(stream, i), k): it
depends only on (key, i, k), never on the batch, the chunking or the devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .coefficients import Coefficients
from .diffusion import at, denoising_step, diffusion_step
from .sampling import REPAINT, ModelFn, per_sample_normal, run_chunk

REVERSE, FORWARD = 0, 1
# The paper's setting (Sec. 5): 250 steps, jump length 10, 10 resamplings.
PAPER_STEPS, PAPER_JUMP_LENGTH, PAPER_JUMP_N_SAMPLE = 250, 10, 10


def default_steps(num_timesteps: int) -> int:
    """The paper's 250 steps, or all of them on a shorter process."""
    return min(PAPER_STEPS, num_timesteps)


# The longest jump schedule a call may ask for: the paper's 250:10:10 is 4,570
# iterations; a million is days of model calls at the released sizes, and the
# schedule itself (8 MB) is then still small.
MAX_ITERATIONS = 10**6


def schedule_length(
    num_steps: int, jump_length: int = PAPER_JUMP_LENGTH, jump_n_sample: int = PAPER_JUMP_N_SAMPLE
) -> int:
    """The number of rows `jump_schedule` makes, without making it: every jump
    adds `jump_length` forward and as many reverse rows."""
    if jump_n_sample <= 1:
        return num_steps
    points = len(range(0, num_steps - jump_length, jump_length))
    return num_steps + 2 * jump_length * (jump_n_sample - 1) * points


def check_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> int:
    """The schedule's length, or ValueError naming it when it is over `MAX_ITERATIONS`."""
    n = schedule_length(num_steps, jump_length, jump_n_sample)
    if n > MAX_ITERATIONS:
        raise ValueError(
            f"steps={num_steps}, jump_length={jump_length}, jump_n_sample={jump_n_sample} make a chain of "
            f"{n:,} iterations, more than {MAX_ITERATIONS:,}; the paper's 250:10:10 is "
            f"{schedule_length(PAPER_STEPS):,}: lower jump_n_sample or steps"
        )
    return n


def jump_schedule(
    num_steps: int, jump_length: int = PAPER_JUMP_LENGTH, jump_n_sample: int = PAPER_JUMP_N_SAMPLE
) -> np.ndarray:
    """RePaint's time schedule with jumps (Lugmayr et al. 2022, Sec. 4.2 and Fig. 4).

    Rows (t, direction) int32 of shape (K, 2), from x_T (`num_steps` forward
    steps) to x_0. At every `jump_length`-th step t below num_steps -
    jump_length, after the reverse step the chain jumps back `jump_length`
    forward steps and comes down again, `jump_n_sample` - 1 times (r
    resamplings in all). jump_n_sample = 1 has no jumps: the "replacement"
    method (Sec. 4.1 alone). The same schedule as the RePaint release's
    `get_schedule_jump` and diffusers' `RePaintScheduler.set_timesteps`.
    """
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)} if jump_n_sample > 1 else {}
    rows, t = [], num_steps
    while t > 0:
        t -= 1
        rows.append((t, REVERSE))
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                rows.append((t, FORWARD))
                t += 1
    return np.array(rows, np.int32).reshape(-1, 2)


def repaint_step(output, x, t, noise, known, mask, coeffs: Coefficients, clip=True):
    """One reverse step of RePaint (Alg. 1 lines 4-8) at chain index t: x_{t-1}.

    The filled part (mask 0) is the reverse step p(x_{t-1} | x_t) of Ho et
    al. Alg. 2 (`denoising_step`); the kept part (mask 1) is the known image
    drawn from q(x_{t-1} | x_0) (RePaint eq. 8a, Ho et al. eq. 4):
    sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1}) noise, so at t = 0 it is x_0
    itself. Both parts draw on one `noise`: with a binary mask they use
    disjoint pixels of it, so they are independent.
    `known` (n, H, W, C) in [-1, 1]; `mask` 0/1 broadcastable to it.
    Returns (x_{t-1}, predicted x_0 of the model).
    """
    unknown, pred_x0 = denoising_step(output, x, t, noise, coeffs, clip=clip)
    abar_prev = at(coeffs.alphas_cumprod_prev, t)
    kept = jnp.sqrt(abar_prev) * known + jnp.sqrt(1.0 - abar_prev) * noise
    return mask * kept + (1.0 - mask) * unknown, pred_x0


def repaint_chunk(
    model_fn: ModelFn,
    params,
    coeffs: Coefficients,
    x,
    pred_x0,
    known,
    mask,
    rows,
    first,
    n_valid,
    key,
    sample_ids,
    *,
    chunk: int,
    clip: bool = True,
):
    """Up to `chunk` iterations of a jump schedule, from x.

    `rows` (chunk, 2) int32 are iterations first, first + 1, ... of the
    schedule; row k runs when k < n_valid (a REVERSE row calls the model at
    coeffs.timesteps[t], a FORWARD row does not) and is skipped otherwise.
    Returns (x, pred_x0 of the last REVERSE row run so far).
    """
    n = x.shape[0]

    def step(carry, k):
        t, direction = rows[k, 0], rows[k, 1]
        tt = jnp.full((n,), t, jnp.int32)
        noise = per_sample_normal(key, REPAINT, sample_ids, first + k, x.shape[1:])

        def reverse(carry):
            output = model_fn(params, carry[0], coeffs.timesteps[tt])
            return repaint_step(output, carry[0], tt, noise, known, mask, coeffs, clip=clip)

        def forward(carry):
            return diffusion_step(carry[0], tt, noise, coeffs), carry[1]

        return jax.lax.switch(direction, (reverse, forward), carry)

    x, pred_x0 = run_chunk(step, (x, pred_x0), n_valid, chunk)
    return x, pred_x0


def check_mask(mask, shape: tuple[int, int, int]) -> np.ndarray:
    """A 0/1 mask -> (m, H, W, C) float32; accepts (H, W), (H, W, 1|C) and a leading batch.

    1 keeps the image's pixel, 0 fills it. Raises ValueError naming what is wrong.
    """
    h, w, c = shape
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.float32)
    if not np.issubdtype(m.dtype, np.number):
        raise TypeError(f"mask must be a numeric or bool array, got dtype {m.dtype}")
    if m.ndim == 2:
        m = m[..., None]
    if m.ndim == 3 and m.shape[:2] == (h, w) and m.shape[-1] in (1, c):
        m = m[None]
    if m.ndim == 4 and m.shape[:3] == (m.shape[0], h, w) and m.shape[-1] == 1:
        m = np.repeat(m, c, axis=-1)
    if m.ndim != 4 or m.shape[1:] != (h, w, c):
        raise ValueError(
            f"mask has shape {np.shape(mask)}; expected (H, W), (H, W, 1), (H, W, {c}) or with a "
            f"leading batch, H = W = {h} as the model's images"
        )
    bad = (m != 0) & (m != 1)
    if bad.any():
        raise ValueError(
            f"mask has {int(bad.sum())} values other than 0 and 1 (e.g. {m[bad][0]!r}); "
            "use 1 to keep a pixel and 0 to fill it (threshold a soft mask first)"
        )
    if m.all():
        raise ValueError("the mask keeps every pixel (all 1): nothing to inpaint; mark pixels to fill with 0")
    return m.astype(np.float32)
