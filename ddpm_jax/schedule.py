"""Beta schedules of the forward process in float64 (release: `get_beta_schedule` in
`diffusion_tf/diffusion_utils.py`; docs/reference.md §1)."""

from __future__ import annotations

import numpy as np

SCHEDULES = ("linear", "quad", "warmup10", "warmup50", "const", "jsd")


def _warmup(beta_start, beta_end, num_diffusion_timesteps, frac):
    betas = np.full(num_diffusion_timesteps, beta_end, dtype=np.float64)
    warmup = int(num_diffusion_timesteps * frac)
    betas[:warmup] = np.linspace(beta_start, beta_end, warmup, dtype=np.float64)
    return betas


def get_beta_schedule(name, *, beta_start, beta_end, num_diffusion_timesteps):
    """Betas of length T as float64 numpy, for one of `SCHEDULES`."""
    T = int(num_diffusion_timesteps)
    if name == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif name == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif name == "warmup10":
        betas = _warmup(beta_start, beta_end, T, 0.1)
    elif name == "warmup50":
        betas = _warmup(beta_start, beta_end, T, 0.5)
    elif name == "const":
        betas = np.full(T, beta_end, dtype=np.float64)
    elif name == "jsd":
        # 1/T, 1/(T-1), ..., 1: ends at beta = 1, so abar[T-1] = 0.
        betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    else:
        raise ValueError(f"unknown beta schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return betas
