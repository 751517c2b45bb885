import numpy as np
import pytest

from ddpm_jax.schedule import SCHEDULES, get_beta_schedule

B0, B1, T = 1e-4, 0.02, 1000


def reference(name, T):
    """Each schedule written element by element from docs/reference.md §1."""
    lin = lambda a, b, n, i: a + (b - a) * i / (n - 1)  # noqa: E731
    if name == "linear":
        return [lin(B0, B1, T, i) for i in range(T)]
    if name == "quad":
        return [lin(B0**0.5, B1**0.5, T, i) ** 2 for i in range(T)]
    if name in ("warmup10", "warmup50"):
        w = int(T * (0.1 if name == "warmup10" else 0.5))
        return [lin(B0, B1, w, i) if i < w else B1 for i in range(T)]
    if name == "const":
        return [B1] * T
    if name == "jsd":
        return [1.0 / (T - i) for i in range(T)]
    raise AssertionError(name)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [T, 37])
def test_schedule_matches_formula(name, steps):
    betas = get_beta_schedule(name, beta_start=B0, beta_end=B1, num_diffusion_timesteps=steps)
    assert betas.dtype == np.float64 and betas.shape == (steps,)
    np.testing.assert_allclose(betas, reference(name, steps), rtol=1e-12, atol=0)


def test_released_schedule_endpoints():
    betas = get_beta_schedule("linear", beta_start=B0, beta_end=B1, num_diffusion_timesteps=T)
    assert betas[0] == B0 and betas[-1] == pytest.approx(B1, abs=1e-15)


def test_warmup_lengths():
    w10 = get_beta_schedule("warmup10", beta_start=B0, beta_end=B1, num_diffusion_timesteps=T)
    assert np.all(w10[100:] == B1) and w10[99] == pytest.approx(B1) and w10[0] == B0 and w10[98] < B1


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(ValueError, match="cosine.*linear, quad, warmup10, warmup50, const, jsd"):
        get_beta_schedule("cosine", beta_start=B0, beta_end=B1, num_diffusion_timesteps=T)
