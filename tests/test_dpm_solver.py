"""DPM-Solver++(2M) and its SDE variant: parity with diffusers' DPMSolverMultistepScheduler,
and the chain's properties (split over chunks, resumed from a Step, any batch).

Our chain on a random UNet2DModel's converted params (the one-level config,
which compiles fastest) is compared with a
step-by-step loop of the scheduler (algorithm_type "dpmsolver++" or
"sde-dpmsolver++", solver_order 2, midpoint, lower_order_final, final sigma 0,
linspace timesteps) over the linear T = 1000 schedule. `clip=True` is the
scheduler's thresholding with sample_max_value 1: its s = clamp(quantile, 1, 1)
= 1, so it clips x_0 to [-1, 1] as we do. Differences by design, too small to
show here: diffusers computes sigma, lambda and h in float32 at each step (ours
in float64, cast once), and its x_0 is (x - sigma eps) / alpha, ours
sqrt(1/abar) x - sqrt(1/abar - 1) eps.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from ddpm_jax import Diffusion, DiffusionConfig  # noqa: E402
from ddpm_jax.cli import main  # noqa: E402
from ddpm_jax.coefficients import linspace_timesteps  # noqa: E402
from ddpm_jax.convert.diffusers_format import diffusers_to_flax  # noqa: E402
from ddpm_jax.sampling import DENOISE, initial_noise, per_sample_normal  # noqa: E402

from .helpers import ONE_LEVEL_UNET, diffusers_dpm_solver, numpy_state_dict, random_diffusers_unet  # noqa: E402

log = logging.getLogger(__name__)
TOL = 1e-4
N, KEY = 2, 7
UNET = ONE_LEVEL_UNET
SHAPE = (UNET.resolution, UNET.resolution, UNET.in_channels)


pytestmark = pytest.mark.usefixtures("highest_precision")  # parity at float32's own precision


@pytest.fixture(scope="module")
def peer():
    """diffusers' random UNet2DModel and ours on its params (T = 1000, linear betas)."""
    model = random_diffusers_unet(UNET, seed=3)
    return model, Diffusion(
        diffusion_config=DiffusionConfig(),
        unet_config=UNET,
        params=diffusers_to_flax(numpy_state_dict(model), UNET),
        chunk_size=4,
    )


@pytest.fixture(scope="module")
def chain(peer):
    """chain(S, sampler): the respaced model, built once per module so its chunks compile once."""
    made = {}

    def get(steps, sampler="dpmpp_2m"):
        if (steps, sampler) not in made:
            made[steps, sampler] = peer[1].respaced(steps, sampler=sampler)
        return made[steps, sampler]

    return get


def to_torch(a):
    return torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())


def diffusers_chain(model, steps, *, clip=True, sde=False) -> dict[int, np.ndarray]:
    """x after each step of the scheduler's loop, keyed by our step count (steps left).

    Same x_T as ours; for the SDE our noise of chain index i goes in as variance_noise.
    """
    sched = diffusers_dpm_solver(steps, clip=clip, sde=sde)
    key, ids = jax.random.key(KEY), jnp.arange(N)
    x = to_torch(initial_noise(key, ids, SHAPE))
    out = {}
    with torch.no_grad():
        for j, t in enumerate(sched.timesteps):
            i = steps - 1 - j  # our chain index
            noise = to_torch(per_sample_normal(key, DENOISE, ids, i, SHAPE))
            x = sched.step(model(x, t).sample, t, x, variance_noise=noise).prev_sample
            out[i] = x.numpy().transpose(0, 2, 3, 1)
    return out


def compare(model, ours: Diffusion, steps, *, clip=True, sde=False) -> float:
    """Max |ours - diffusers| over every Step of our chain (relative to the scale when unclipped)."""
    theirs = diffusers_chain(model, steps, clip=clip, sde=sde)
    np.testing.assert_array_equal(
        np.asarray(ours.coeffs.timesteps)[::-1], diffusers_dpm_solver(steps).timesteps.numpy()
    )
    worst = 0.0
    for item in ours.denoise_steps(N, key=KEY, clip=clip):
        want = theirs[item.step]
        err = np.abs(np.asarray(item.x) - want).max() / (1.0 if clip else max(1.0, np.abs(want).max()))
        log.info(
            "%s S=%d clip=%s, x after step %d: max |ours - diffusers| %.2e%s",
            ours.sampler,
            steps,
            clip,
            item.step,
            err,
            "" if clip else " of the scale",
        )
        worst = max(worst, err)
    if clip:  # a real comparison: the chain's intermediate x are mostly inside (-1, 1), not clipped away
        assert (np.abs(theirs[steps // 2]) < 0.999).mean() > 0.3
    return worst


@pytest.mark.parametrize("steps", [5, 10, pytest.param(20, marks=pytest.mark.slow)])
def test_dpmpp_2m_matches_diffusers(peer, chain, steps):
    assert compare(peer[0], chain(steps), steps) <= TOL


def test_unclipped_dpmpp_2m_matches_diffusers(peer, chain):
    """Unclipped, a random UNet's x_0 reaches hundreds (its eps is no denoiser): 1e-4 of that scale."""
    assert compare(peer[0], chain(10), 10, clip=False) <= TOL


def test_sde_variant_matches_diffusers(peer, chain):
    assert compare(peer[0], chain(10, "dpmpp_2m_sde"), 10, sde=True) <= TOL


def test_linspace_timesteps_are_diffusers(peer):
    """Including numpy's round-half-to-even (S = 6: 166.5 -> 166)."""
    for steps in [1, 2, 6, 7, 10, 20, 50, 333, 998, 999]:
        np.testing.assert_array_equal(
            linspace_timesteps(1000, steps)[::-1], diffusers_dpm_solver(steps).timesteps.numpy()
        )
    assert 166 in linspace_timesteps(1000, 6)


def test_split_over_chunks_equals_one_chunk(peer, chain):
    """The previous x_0 crosses chunk boundaries in the scan carry: chunks of 4 == one chunk of 10."""
    one = peer[1].respaced(10, sampler="dpmpp_2m", chunk_size=10)
    np.testing.assert_allclose(chain(10).denoise(N, key=KEY), one.denoise(N, key=KEY), atol=1e-5)


def test_resume_from_a_step_equals_one_call(chain):
    m = chain(10)
    whole = np.asarray(m.denoise(N, key=KEY))
    compiled = m._denoise_chunk._cache_size()
    # Stopped at a chunk boundary (step 6) and inside a chunk (step 7, after 3 steps).
    for stop in (next(m.denoise_steps(N, key=KEY)), list(m.denoise_steps(N, 3, key=KEY))[-1]):
        rest = m.denoise(N, x=stop.x, curr_step=stop.step, pred_x0=stop.pred_x0, key=KEY)
        np.testing.assert_array_equal(rest, whole)
    # The previous prediction is real state: without it the chain restarts at first order.
    restarted = m.denoise(N, x=stop.x, curr_step=stop.step, key=KEY)
    assert np.abs(np.asarray(restarted) - whole).max() > 1e-3
    assert m._denoise_chunk._cache_size() == compiled  # with or without pred_x0: no recompilation


def test_sample_i_is_the_same_in_any_batch(chain):
    """The SDE variant's x_T and noise are keyed by (key, sample, step): sample 1 is the
    same second in batch [0, 1] and first in batch [1, 2]."""
    m = chain(10, "dpmpp_2m_sde")
    a = np.asarray(m.denoise(N, key=KEY))
    b = np.asarray(m.denoise(N, key=KEY, first_index=1))
    np.testing.assert_allclose(b[0], a[1], atol=1e-5)
    assert not np.allclose(a[0], a[1])


def test_bad_input(peer, chain):
    model = peer[1]
    with pytest.raises(ValueError, match="unknown sampler 'dpmpp_3m'; valid: ddpm, ddim, dpmpp_2m, dpmpp_2m_sde"):
        model.respaced(10, sampler="dpmpp_3m")
    with pytest.raises(ValueError, match=r"steps=1000 is out of range; expected 1 <= steps <= 999"):
        model.respaced(1000, sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="sampler 'dpmpp_2m' needs steps, 1 <= steps <= 999"):
        model.respaced(None, sampler="dpmpp_2m")
    m = chain(10)
    x = np.zeros((N, *SHAPE), np.float32)
    with pytest.raises(ValueError, match=r"pred_x0 has shape \(1, 8, 8, 1\)"):
        m.denoise(N, x=x, curr_step=5, pred_x0=x[:1])
    with pytest.raises(ValueError, match="at curr_step=T=10 there is none"):
        m.denoise(N, x=x, curr_step=10, pred_x0=x)


def test_sample_cli_passes_the_sampler_on(peer, tmp_path, capsys):
    """`ddpm-jax sample --sampler dpmpp_2m` reaches the model (which asks for --steps)."""
    path = tmp_path / "m.safetensors"
    peer[1].save_pretrained(path)
    args = ["sample", "--model", str(path), "--n", "2", "--sampler", "dpmpp_2m", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "sampler 'dpmpp_2m' needs steps, 1 <= steps <= 999" in capsys.readouterr().err
    assert main([*args, "--steps", "1000"]) == 2
    assert "steps=1000 is out of range; expected 1 <= steps <= 999" in capsys.readouterr().err
