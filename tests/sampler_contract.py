"""What every registered sampler must do (as diffusers' `SchedulerCommonTest`).

`SamplerContract` runs on the sampler its `sampler_name` fixture names, on the
tiny model (T = 40, chunks of 8): resume == one run, any batch or chunk size
gives the same samples, no recompilation across seeds, starts and chain
lengths, another sampler per call on the same compiled UNet, and the step
against a float64 numpy reference written from the paper's equations
(`REFERENCES`, keyed by name: a new sampler brings its own), for a network
that predicts eps, v or x_0 (`eps_of` turns each into the eps a reference reads).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from ddpm_jax import Diffusion, samplers
from ddpm_jax.coefficients import SPACINGS, make_coefficients
from ddpm_jax.config import PREDICTION_TYPES
from ddpm_jax.schedule import get_beta_schedule

from .helpers import TINY_DIFFUSION, TINY_UNET


def chain_abar(config, spacing: str, steps: int) -> np.ndarray:
    """abar at the chain's timesteps, float64, from the betas alone (eq. 4)."""
    betas = get_beta_schedule(
        config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        num_diffusion_timesteps=config.num_diffusion_timesteps,
    )
    return np.cumprod(1.0 - betas)[SPACINGS[spacing](len(betas), steps)]


def eps_of(output, x, abar, prediction_type):
    """The eps a network's output at x_t means: itself, from v = alpha eps - sigma x_0 (Salimans
    & Ho 2022, Sec. 4: eps = alpha v + sigma x_t), or from x_0 (eq. 4 solved for eps)."""
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    if prediction_type == "v":
        return alpha * output + sigma * x
    if prediction_type == "x0":
        return (x - alpha * output) / sigma
    return output


def _x0(eps, x, abar, clip):
    """x_0 from eps (eq. 15), clipped when `clip`, and the eps that goes with it (eq. 9)."""
    x0 = (x - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    if clip:
        x0 = np.clip(x0, -1, 1)
        eps = (x - np.sqrt(abar) * x0) / np.sqrt(1 - abar)
    return x0, eps


def ref_ddpm(eps, x, t, z, abar, *, clip, var_type, **_):
    """Alg. 2 with the posterior mean of eq. (7); sigma^2 = beta (fixedlarge, t = 0 borrowing
    beta tilde_1) or beta tilde (fixedsmall); no noise at t = 0."""
    prev = np.append(1.0, abar[:-1])
    beta = 1 - abar / prev
    tilde = beta * (1 - prev) / (1 - abar)
    out, x0s = [], []
    for i, ti in enumerate(t):
        x0, _ = _x0(eps[i], x[i], abar[ti], clip)
        mean = (np.sqrt(prev[ti]) * beta[ti] * x0 + np.sqrt(1 - beta[ti]) * (1 - prev[ti]) * x[i]) / (1 - abar[ti])
        var = tilde[ti] if var_type == "fixedsmall" else (beta[ti] if ti > 0 else tilde[min(1, len(abar) - 1)])
        out.append(mean + (np.sqrt(var) * z[i] if ti > 0 else 0))
        x0s.append(x0)
    return np.stack(out), np.stack(x0s)


def ref_ddim(eps, x, t, z, abar, *, clip, eta, **_):
    """DDIM, Song et al. 2021 eq. (12) with sigma of eq. (16)."""
    prev = np.append(1.0, abar[:-1])
    out, x0s = [], []
    for i, ti in enumerate(t):
        x0, e = _x0(eps[i], x[i], abar[ti], clip)
        sigma = eta * np.sqrt((1 - prev[ti]) / (1 - abar[ti]) * (1 - abar[ti] / prev[ti]))
        out.append(np.sqrt(prev[ti]) * x0 + np.sqrt(max(1 - prev[ti] - sigma**2, 0.0)) * e + sigma * z[i])
        x0s.append(x0)
    return np.stack(out), np.stack(x0s)


def _ref_dpmpp(eps, x, t, z, abar, *, clip, prev_x0, has_prev, sde, **_):
    """DPM-Solver++(2M), Lu et al. 2022 Alg. 2 (and its SDE variant), in alpha, sigma, lambda:
    first order at the chain's first step, its last (to sigma = 0) and without a previous x_0."""
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    lam = np.log(alpha / sigma)
    S = len(abar)
    out, x0s = [], []
    for i, ti in enumerate(t):
        x0, _ = _x0(eps[i], x[i], abar[ti], clip)
        a_next, s_next = (alpha[ti - 1], sigma[ti - 1]) if ti > 0 else (1.0, 0.0)
        h = (lam[ti - 1] - lam[ti]) if ti > 0 else np.inf
        d = x0
        if has_prev and 0 < ti < S - 1:
            r = (lam[ti] - lam[ti + 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0[i]
        if not sde:
            out.append(s_next / sigma[ti] * x[i] + a_next * (1 - np.exp(-h)) * d)
        else:
            out.append(
                s_next / sigma[ti] * np.exp(-h) * x[i]
                + a_next * (1 - np.exp(-2 * h)) * d
                + s_next * np.sqrt(1 - np.exp(-2 * h)) * z[i]
            )
        x0s.append(x0)
    return np.stack(out), np.stack(x0s)


REFERENCES = {
    "ddpm": ref_ddpm,
    "ddim": ref_ddim,
    "dpmpp_2m": lambda *a, **k: _ref_dpmpp(*a, sde=False, **k),
    "dpmpp_2m_sde": lambda *a, **k: _ref_dpmpp(*a, sde=True, **k),
}

STEPS = 7  # a respaced chain every sampler accepts on T = 40


class SamplerContract:
    """Subclass and give a `sampler_name` fixture; every test here then runs on that sampler."""

    @pytest.fixture
    def sampler(self, sampler_name) -> samplers.Sampler:
        return samplers.get(sampler_name)

    @pytest.fixture
    def model(self, tiny_model, sampler) -> Diffusion:
        return tiny_model.respaced(STEPS, sampler)

    def test_resume_equals_one_run(self, model):
        whole = np.asarray(model.denoise(3, key=7))
        first = list(model.denoise_steps(3, n_steps=3, key=7))[-1]
        second = list(model.denoise_steps(3, n_steps=2, x=first.x, curr_step=first.step, key=7, pred_x0=first.pred_x0))[
            -1
        ]
        rest = model.denoise(3, x=second.x, curr_step=second.step, key=7, pred_x0=second.pred_x0)
        np.testing.assert_array_equal(np.asarray(rest), whole)

    def test_any_batch_size_gives_the_same_samples(self, model):
        big = np.asarray(model.denoise(3, key=11))
        np.testing.assert_allclose(np.asarray(model.denoise(1, key=11))[0], big[0], atol=1e-5)
        np.testing.assert_allclose(np.asarray(model.denoise(1, key=11, first_index=2))[0], big[2], atol=1e-5)
        assert not np.allclose(big[0], big[1])

    def test_any_chunk_size_gives_the_same_samples(self, model, tiny_params, sampler):
        other = Diffusion(
            diffusion_config=TINY_DIFFUSION,
            unet_config=TINY_UNET,
            params=tiny_params,
            chunk_size=3,
            sampler=sampler,
            steps=STEPS,
        )
        np.testing.assert_allclose(np.asarray(other.denoise(3, key=4)), np.asarray(model.denoise(3, key=4)), atol=1e-5)

    def test_seeds_repeat_and_differ(self, model, sampler):
        a, b = model.denoise(3, key=1), model.denoise(3, key=1)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, model.denoise(3, key=jax.random.key(2)))

    def test_no_recompilation_across_seeds_starts_and_chain_lengths(self, tiny_model, sampler):
        model = tiny_model.respaced(STEPS, sampler)
        chunk = model._denoise_chunk  # shared by every respaced copy of tiny_model
        x = model.denoise(3, n_steps=2, key=0)
        compiled = chunk._cache_size()
        model.denoise(3, n_steps=4, x=x, curr_step=STEPS - 2, key=5)
        model.denoise(3, n_steps=1, key=jax.random.key(9))
        most = sampler.max_steps(TINY_DIFFUSION.num_diffusion_timesteps)
        for steps in (1, 3, most):
            tiny_model.denoise(3, key=3, sampler=sampler, steps=steps)
            tiny_model.respaced(steps, sampler).denoise(3, n_steps=1, key=4)
        assert chunk._cache_size() == compiled
        assert model.run_params is tiny_model.run_params  # one layout of the UNet for every chain

    def test_another_sampler_per_call_equals_a_respaced_model(self, tiny_model, model, sampler):
        np.testing.assert_array_equal(
            np.asarray(tiny_model.denoise(3, key=8, sampler=sampler, steps=STEPS)), np.asarray(model.denoise(3, key=8))
        )

    def test_step_counts_out_of_range_are_refused(self, tiny_model, sampler):
        most = sampler.max_steps(TINY_DIFFUSION.num_diffusion_timesteps)
        for bad in (0, most + 1):
            with pytest.raises(ValueError, match="steps"):
                tiny_model.respaced(bad, sampler)
            with pytest.raises(ValueError, match="steps"):
                tiny_model.denoise(1, sampler=sampler, steps=bad)

    @pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
    @pytest.mark.parametrize("clip", [True, False])
    @pytest.mark.parametrize("steps", [STEPS, 39])
    def test_step_matches_float64_reference(self, sampler_name, sampler, clip, steps, prediction_type):
        if sampler_name not in REFERENCES:
            pytest.fail(
                f"no float64 reference for sampler {sampler_name!r}: add one to tests/sampler_contract.py REFERENCES"
            )
        rng = np.random.default_rng(0)
        n = 4
        output, x, z, prev_x0 = (rng.normal(size=(n, 5, 5, 3)) for _ in range(4))
        t = np.array([0, 1, steps // 2, steps - 1], np.int32)
        config = dataclasses.replace(TINY_DIFFUSION, prediction_type=prediction_type)
        coeffs = make_coefficients(config, steps, sampler.spacing)
        abar = chain_abar(config, sampler.spacing, steps)
        eps = eps_of(output, x, abar[t][:, None, None, None], prediction_type)
        eta = 0.6 if sampler.eta is not None else None
        rule = sampler.with_eta(eta)
        for has_prev in (False, True):
            got, got_x0 = rule.apply(
                *(a.astype(np.float32) for a in (output, x)),
                t,
                z.astype(np.float32),
                coeffs,
                clip=clip,
                prev_x0=prev_x0.astype(np.float32),
                has_prev=has_prev,
            )
            want, want_x0 = REFERENCES[sampler_name](
                eps,
                x,
                t,
                z,
                abar,
                clip=clip,
                eta=eta,
                prev_x0=prev_x0,
                has_prev=has_prev,
                var_type=config.model_var_type,
            )
            np.testing.assert_allclose(got_x0, want_x0, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
