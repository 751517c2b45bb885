"""The sampler registry: every registered sampler passes the contract; a new one is one entry."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import samplers
from ddpm_jax.diffusion import at, model_prediction
from ddpm_jax.samplers import Sampler

from .sampler_contract import REFERENCES, SamplerContract, _x0


class TestEveryRegisteredSampler(SamplerContract):
    @pytest.fixture(params=samplers.names())
    def sampler_name(self, request):
        return request.param


def _euler(output, x, t, noise, coeffs, clip=True):
    """A throwaway sampler: one Euler step of the probability-flow ODE in
    y = x / sqrt(abar) against sigma = sqrt(1/abar - 1)."""
    _, x0 = model_prediction(output, x, t, coeffs, clip)
    abar, abar_prev = at(coeffs.alphas_cumprod, t), at(coeffs.alphas_cumprod_prev, t)
    sigma, sigma_prev = jnp.sqrt(1 / abar - 1), jnp.sqrt(1 / abar_prev - 1)
    d = (x / jnp.sqrt(abar) - x0) / sigma  # dx/dsigma of x / sqrt(abar)
    return jnp.sqrt(abar_prev) * (x / jnp.sqrt(abar) + (sigma_prev - sigma) * d), x0


def _ref_euler(eps, x, t, z, abar, *, clip, **_):
    prev = np.append(1.0, abar[:-1])
    out, x0s = [], []
    for i, ti in enumerate(t):
        x0, _ = _x0(eps[i], x[i], abar[ti], clip)
        sigma, sigma_prev = np.sqrt(1 / abar[ti] - 1), np.sqrt(1 / prev[ti] - 1)
        y = x[i] / np.sqrt(abar[ti])
        out.append(np.sqrt(prev[ti]) * (y + (sigma_prev - sigma) * (y - x0) / sigma))
        x0s.append(x0)
    return np.stack(out), np.stack(x0s)


class TestANewSamplerIsOneEntry(SamplerContract):
    """Registering a sampler (and its float64 reference) is all it takes to run the contract."""

    @pytest.fixture
    def sampler_name(self, monkeypatch):
        samplers.register(Sampler("euler_test", _euler, description="throwaway Euler step"))
        monkeypatch.setitem(REFERENCES, "euler_test", _ref_euler)
        yield "euler_test"
        samplers.unregister("euler_test")


def test_names_and_limits():
    assert samplers.names()[:4] == ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde")
    assert [samplers.get(n).max_steps(1000) for n in samplers.names()[:4]] == [1000, 1000, 999, 999]
    assert samplers.get("ddpm").check_steps(None, 40) == 40
    with pytest.raises(ValueError, match=r"'dpmpp_2m' needs steps, 1 <= steps <= 39"):
        samplers.get("dpmpp_2m").check_steps(None, 40)
    with pytest.raises(ValueError, match="unknown sampler 'plms'; valid: ddpm, ddim, dpmpp_2m, dpmpp_2m_sde"):
        samplers.get("plms")


def test_eta_is_refused_where_a_sampler_has_none():
    assert samplers.get("ddim").eta == 0.0 and samplers.get("ddim", 0.5).eta == 0.5
    for name in ("ddpm", "dpmpp_2m", "dpmpp_2m_sde"):
        assert samplers.get(name).eta is None
        with pytest.raises(ValueError, match=f"sampler '{name}' has no eta .only ddim"):
            samplers.get(name, 0.7)
    with pytest.raises(ValueError, match="eta"):
        samplers.get("ddim", 1.5)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'ddim' is already registered"):
        samplers.register(Sampler("ddim", _euler))
    with pytest.raises(ValueError, match="unknown spacing 'log'"):
        Sampler("x", _euler, spacing="log")


def test_inpaint_runs_ddpm_steps_and_refuses_another_sampler(tiny_model):
    """RePaint is defined on DDPM steps (Lugmayr et al. Alg. 1): a model whose sampler is another
    one is refused, a respaced DDPM model inpaints on its own chain, and steps= picks the chain."""
    picture = np.zeros((8, 8, 1), np.float32)
    mask = np.ones((8, 8), np.float32)
    mask[4:] = 0
    for name, steps in (("ddim", 10), ("dpmpp_2m", 10)):
        with pytest.raises(ValueError, match=f"RePaint.*DDPM steps.*sampler is '{name}'"):
            tiny_model.respaced(steps, name).inpaint(picture, mask, key=0, jump_n_sample=1)
    strided = tiny_model.respaced(10)
    chain = list(strided.inpaint_steps(picture, mask, key=0, jump_n_sample=1))
    same = list(tiny_model.inpaint_steps(picture, mask, key=0, jump_n_sample=1, steps=10))
    assert len(chain) == len(same) == 2  # 10 reverse rows in chunks of 8
    np.testing.assert_array_equal(np.asarray(chain[-1].x), np.asarray(same[-1].x))


def test_bpd_is_the_bound_of_the_models_own_process_whatever_the_sampler(tiny_model):
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    full = tiny_model.bpd(images, key=3)
    assert full.terms.shape == (2, 40)
    for name, steps in (("ddim", 7), ("dpmpp_2m", 5), ("ddpm", 10)):
        other = tiny_model.respaced(steps, name).bpd(images, key=3)
        np.testing.assert_array_equal(other.total, full.total)
