"""Prediction types: a network that outputs eps, v = alpha eps - sigma x_0 (Salimans & Ho 2022,
Sec. 4) or x_0, read through one place (`coefficients._prediction_tables`, `diffusion.model_prediction`).

The strong check: an eps network re-expressed as a v or an x_0 network (its output mapped by
the paper's equations in float64) must give the eps network's chains, bound, inpainting and
interpolation. Then the tables against float64 equations, the training target, the config and
its metadata, and diffusers: `prediction_type` in `scheduler_config.json` both ways, its
schedulers step by step on random inputs, and a `v_prediction` checkpoint that loads and samples
as diffusers does. (Each sampler's step for each type: `tests/sampler_contract.py`.)
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import Diffusion, DiffusionConfig, samplers
from ddpm_jax.coefficients import make_coefficients
from ddpm_jax.config import PREDICTION_TYPES, config_to_dict
from ddpm_jax.diffusion import model_prediction, q_sample
from ddpm_jax.inpainting import jump_schedule, repaint_chunk
from ddpm_jax.interpolation import lerp
from ddpm_jax.likelihood import bound_chunk, variational_bound
from ddpm_jax.sampling import DENOISE, denoise_chunk, initial_noise, per_sample_normal
from ddpm_jax.schedule import get_beta_schedule
from ddpm_jax.train import diffusion_loss
from ddpm_jax.unet import UNet
from ddpm_jax.weights import FORMAT, expected_shapes, flatten_params, load_weights, save_weights, unflatten_params

from .helpers import MINI_TRAIN, ONE_LEVEL_UNET, TINY_DIFFUSION, diffusers_dpm_solver, four_images

UNET = ONE_LEVEL_UNET  # compiles fastest
SHAPE = (UNET.resolution, UNET.resolution, UNET.in_channels)
STEPS, N = 7, 2
KEY = jax.random.key(5)
IDS = jnp.arange(N, dtype=jnp.int32)


def config(prediction_type: str, **kwargs) -> DiffusionConfig:
    return dataclasses.replace(TINY_DIFFUSION, prediction_type=prediction_type, **kwargs)


def abar64(cfg: DiffusionConfig) -> np.ndarray:
    """abar of the full process in float64, from the betas alone (eq. 4)."""
    betas = get_beta_schedule(
        cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        num_diffusion_timesteps=cfg.num_diffusion_timesteps,
    )
    return np.cumprod(1.0 - betas)


def _scaled_params(seed: int = 0) -> dict:
    """Random params of `UNET` at a sane scale (no Flax init to compile): kernels
    N(0, 1/fan_in), biases N(0, 0.1^2), GroupNorm scales 1 + N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in expected_shapes(UNET).items():
        w = rng.standard_normal(shape)
        if name.endswith("kernel"):
            w = w / np.sqrt(np.prod(shape[:-1]))
        else:
            w = (1.0 if name.endswith("scale") else 0.0) + 0.1 * w
        flat[name] = w.astype(np.float32)
    return jax.tree.map(jnp.asarray, unflatten_params(flat))


@pytest.fixture(scope="module")
def unet_params():
    return _scaled_params()


# --- an eps network re-expressed as each prediction type ---------------------------------


def as_prediction(prediction_type: str, abar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), float64 per model timestep, with output = a eps + b x_t for a network predicting
    `prediction_type` that knows eps: x_0 = (x_t - sigma eps) / alpha (eq. 4), so
    v = alpha eps - sigma x_0 = (eps - sigma x_t) / alpha (Salimans & Ho 2022, Sec. 4)."""
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    return {
        "eps": (np.ones_like(abar), np.zeros_like(abar)),
        "v": (1.0 / alpha, -sigma / alpha),
        "x0": (-sigma / alpha, 1.0 / alpha),
    }[prediction_type]


def derived(unet_params, prediction_type: str) -> dict:
    a, b = as_prediction(prediction_type, abar64(TINY_DIFFUSION))
    return {"unet": unet_params, "a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def model_fn(params, x, t):
    """The eps network's output as `derived` re-expresses it (t: model timesteps)."""
    eps = UNet(UNET).apply({"params": params["unet"]}, x, t)
    return params["a"][t][:, None, None, None] * eps + params["b"][t][:, None, None, None] * x


@cache
def denoise_fn():
    return jax.jit(partial(denoise_chunk, model_fn, chunk=STEPS), static_argnames=("sampler", "clip"))


def chain(params, prediction_type, sampler, x, start):
    """x after `start` reverse steps of `sampler` on the STEPS-step chain: one compiled chunk."""
    coeffs = make_coefficients(config(prediction_type), STEPS, sampler.spacing)
    x, _ = denoise_fn()(params, coeffs, x, jnp.zeros_like(x), start, start, KEY, IDS, sampler=sampler, clip=True)
    return np.asarray(x)


@pytest.mark.parametrize("name", samplers.names())
def test_an_eps_network_as_v_or_x0_samples_the_same_chain(unet_params, name):
    sampler = samplers.get(name, 0.5 if name == "ddim" else None)
    x_T = initial_noise(KEY, IDS, SHAPE)
    want = chain(derived(unet_params, "eps"), "eps", sampler, x_T, STEPS)
    assert np.abs(want).max() > 0.1 and not np.allclose(want[0], want[1])
    for kind in ("v", "x0"):
        np.testing.assert_allclose(chain(derived(unet_params, kind), kind, sampler, x_T, STEPS), want, atol=2e-5)


def test_an_eps_network_as_v_or_x0_has_the_same_bound(unet_params):
    bound = jax.jit(partial(bound_chunk, model_fn, chunk=8), static_argnames="clip")
    x0 = jnp.asarray(four_images(3)[:N] / 127.5 - 1.0, jnp.float32)

    def run(kind):
        return variational_bound(
            bound, derived(unet_params, kind), make_coefficients(config(kind)), x0, KEY, IDS, chunk=8
        )

    want = run("eps")
    for kind in ("v", "x0"):
        got = run(kind)
        np.testing.assert_allclose(got.terms, want.terms, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.mse, want.mse, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.total, want.total, rtol=1e-5)


def test_an_eps_network_as_v_or_x0_inpaints_and_interpolates_the_same(unet_params):
    rows = jnp.asarray(jump_schedule(STEPS, 2, 2))
    repaint = jax.jit(partial(repaint_chunk, model_fn, chunk=len(rows)), static_argnames="clip")
    rng = np.random.default_rng(1)
    known = jnp.asarray(rng.uniform(-1, 1, (N, *SHAPE)), jnp.float32)
    mask = jnp.asarray(np.arange(SHAPE[1])[None, None, :, None] < 4, jnp.float32)
    x_T = initial_noise(KEY, IDS, SHAPE)
    # Interpolation (Sec. 4.4): two images to x_t at chain step 4, mixed, decoded by DDPM steps.
    ddpm, t = samplers.get("ddpm"), 4
    coeffs = make_coefficients(TINY_DIFFUSION, STEPS)
    x_t = q_sample(known, jnp.full((N,), t - 1, jnp.int32), x_T, coeffs)
    mix = lerp(x_t[0], x_t[1], [0.3, 0.7])

    def run(kind):
        params = derived(unet_params, kind)
        inpainted, _ = repaint(
            params,
            make_coefficients(config(kind), STEPS),
            x_T,
            jnp.zeros_like(x_T),
            known,
            mask,
            rows,
            0,
            len(rows),
            KEY,
            IDS,
        )
        return np.asarray(inpainted), chain(params, kind, ddpm, mix, t)

    want = run("eps")
    for kind in ("v", "x0"):
        for got, ref in zip(run(kind), want):
            np.testing.assert_allclose(got, ref, atol=2e-5)


# --- the tables, the training target, Diffusion.eps -------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("schedule", ["linear", "jsd"])
def test_each_output_means_its_eps_and_x0(prediction_type, schedule):
    """Float64 equations: x_t = alpha x_0 + sigma eps; v = alpha eps - sigma x_0. jsd's last step
    (abar = 0, x_t = eps) is finite for every type."""
    cfg = config(prediction_type, beta_schedule=schedule)
    coeffs, abar = make_coefficients(cfg), abar64(cfg)
    rng = np.random.default_rng(0)
    t = np.array([0, 1, 20, 39], np.int32)
    eps, x0 = rng.normal(size=(2, 4, *SHAPE))
    x0 = np.clip(x0, -1, 1)
    alpha, sigma = (np.sqrt(a)[t][:, None, None, None] for a in (abar, 1 - abar))
    x_t = alpha * x0 + sigma * eps
    output = {"eps": eps, "v": alpha * eps - sigma * x0, "x0": x0}[prediction_type]
    f32 = partial(jnp.asarray, dtype=jnp.float32)
    got_eps, got_x0 = model_prediction(f32(output), f32(x_t), t, coeffs, clip=False)
    # jsd's last step holds no trace of x_0: an eps model's x_0 there is 0 (`coefficients_float64`).
    lost = (abar[t] == 0) & (prediction_type == "eps")
    np.testing.assert_allclose(got_eps, eps, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_x0, np.where(lost[:, None, None, None], 0.0, x0), atol=1e-4)
    target = coeffs.target_from_eps[t][:, None, None, None] * eps + coeffs.target_from_x0[t][:, None, None, None] * x0
    np.testing.assert_allclose(target, output, atol=1e-6)
    clipped_eps, clipped = model_prediction(f32(output), f32(x_t), t, coeffs, clip=True)
    assert np.abs(clipped).max() <= 1.0 and np.isfinite(clipped_eps).all()


class _Oracle:
    """A 'network' that outputs the true eps, v or x_0 for the x_0 it was told (no params)."""

    def __init__(self, x0, kind, abar):
        self.x0, self.kind, self.abar = x0, kind, jnp.asarray(abar, jnp.float32)

    def apply(self, variables, x_t, t, **_):
        alpha, sigma = (jnp.sqrt(a)[t][:, None, None, None] for a in (self.abar, 1.0 - self.abar))
        eps = (x_t - alpha * self.x0) / sigma
        return {"eps": eps, "v": alpha * eps - sigma * self.x0, "x0": self.x0}[self.kind]


def test_the_loss_trains_the_target_the_config_names():
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (16, *SHAPE)), jnp.float32)
    abar = abar64(TINY_DIFFUSION)

    @jax.jit
    def losses_of(coeffs):  # the loss of each oracle under the config's target
        return {o: diffusion_loss({}, _Oracle(x0, o, abar), x0, jax.random.key(1), coeffs) for o in PREDICTION_TYPES}

    for kind in PREDICTION_TYPES:
        losses = {o: float(v) for o, v in losses_of(make_coefficients(config(kind))).items()}
        assert losses[kind] < 1e-8, (kind, losses)
        assert all(v > 1e-3 for o, v in losses.items() if o != kind), (kind, losses)


def test_diffusion_eps_of_a_v_model_is_alpha_v_plus_sigma_x(unet_params):
    model = Diffusion(diffusion_config=config("v"), unet_config=UNET, params=unet_params, conv="xla")
    x = np.random.default_rng(2).normal(size=(3, *SHAPE)).astype(np.float32)
    t = np.array([0, 17, 39], np.int32)
    v = np.asarray(jax.jit(UNet(UNET).apply)({"params": unet_params}, x, t), np.float64)
    abar = abar64(TINY_DIFFUSION)[t][:, None, None, None]
    want = np.sqrt(abar) * v + np.sqrt(1 - abar) * x
    np.testing.assert_allclose(np.asarray(jax.jit(model.eps)(x, t)), want, rtol=1e-4, atol=1e-5)
    # The tables eps made inside that trace are the default chain's, kept as arrays, not tracers.
    np.testing.assert_array_equal(np.asarray(model.coeffs.alphas_cumprod), abar64(TINY_DIFFUSION).astype(np.float32))


# --- the config, its metadata --------------------------------------------------------------


def test_the_field_is_checked_and_names_the_valid_values():
    assert DiffusionConfig().prediction_type == "eps"  # every released model
    for bad in ("epsilon", "v_prediction", None, 1):
        with pytest.raises(ValueError, match=r"unknown prediction_type .*; valid: eps, v, x0"):
            config(bad)


def test_metadata_round_trip_and_files_without_the_field_mean_eps(tmp_path, unet_params):
    for kind in PREDICTION_TYPES:
        save_weights(tmp_path / f"{kind}.safetensors", unet_params, diffusion_config=config(kind), unet_config=UNET)
        assert load_weights(tmp_path / f"{kind}.safetensors")[0] == config(kind)
    from safetensors.numpy import save_file

    older = {k: v for k, v in config_to_dict(TINY_DIFFUSION).items() if k != "prediction_type"}
    save_file(
        {k: np.asarray(v) for k, v in flatten_params(unet_params).items()},
        tmp_path / "old.safetensors",
        metadata={
            "format": FORMAT,
            "diffusion_config": json.dumps(older),
            "unet_config": json.dumps(config_to_dict(UNET)),
        },
    )
    assert load_weights(tmp_path / "old.safetensors")[0] == TINY_DIFFUSION


def test_a_training_checkpoint_written_before_the_field_resumes_as_eps(tmp_path, digits):
    from ddpm_jax.checkpoint import save_checkpoint
    from ddpm_jax.train import init_state
    from ddpm_jax.trainer import open_run, run_metadata

    older = run_metadata(TINY_DIFFUSION, UNET, MINI_TRAIN)
    del older["diffusion_config"]["prediction_type"]
    save_checkpoint(tmp_path / "checkpoints", init_state(UNET, MINI_TRAIN), older)
    run = partial(open_run, tmp_path, digits, unet_config=UNET, train_config=MINI_TRAIN, resume=True)
    assert run(diffusion_config=TINY_DIFFUSION).step == 0
    with pytest.raises(ValueError, match="diffusion_config.prediction_type: checkpoint 'eps' != requested 'v'"):
        run(diffusion_config=config("v"))


# --- diffusers --------------------------------------------------------------------------------

DIFFUSERS_NAME = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def to_torch(a):
    import torch

    return torch.from_numpy(np.asarray(a, np.float32).transpose(0, 3, 1, 2).copy())


def from_torch(a):
    return a.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_scheduler_config_json_round_trip(tmp_path, kind):
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler

    from ddpm_jax.convert.diffusers_format import diffusion_config_from_diffusers, diffusion_config_to_diffusers

    for cfg in (config(kind), DiffusionConfig("quad", 1e-4, 0.03, 50, "fixedsmall", kind)):
        DDPMScheduler(**diffusion_config_to_diffusers(cfg)).save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "scheduler_config.json").read_text())
        assert saved["prediction_type"] == DIFFUSERS_NAME[kind]
        assert diffusion_config_from_diffusers(saved) == cfg
    with pytest.raises(ValueError, match="beta schedule 'jsd' has no DDPMScheduler form"):
        diffusion_config_to_diffusers(config(kind, beta_schedule="jsd"))


@pytest.mark.parametrize("kind", ["v", "x0"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_matches_diffusers_scheduler(monkeypatch, kind, variance, clip):
    """DDPMScheduler on our respaced chain (its custom timesteps), one step at each timestep."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler
    from diffusers.schedulers import scheduling_ddpm

    from ddpm_jax.convert.diffusers_format import diffusion_config_to_diffusers

    cfg = DiffusionConfig(model_var_type=variance.replace("_", ""), prediction_type=kind)
    coeffs = make_coefficients(cfg, 10)
    sched = DDPMScheduler(**{**diffusion_config_to_diffusers(cfg), "clip_sample": clip})
    sched.set_timesteps(timesteps=np.asarray(coeffs.timesteps)[::-1].tolist())
    rng = np.random.default_rng(0)
    for i in range(10):
        output, x, z = (rng.normal(size=(2, *SHAPE)).astype(np.float32) for _ in range(3))
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, z=z, **k: to_torch(z))
        theirs = sched.step(to_torch(output), int(coeffs.timesteps[i]), to_torch(x))
        step = samplers.get("ddpm").apply
        ours = step(output, x, jnp.full((2,), i), z, coeffs, clip=clip, prev_x0=None, has_prev=False)
        np.testing.assert_allclose(ours[1], from_torch(theirs.pred_original_sample), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours[0], from_torch(theirs.prev_sample), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["v", "x0"])
@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_step_matches_diffusers_scheduler(kind, eta, clip):
    """DDIMScheduler over all T (its prev = t - 1), eps re-derived from a clipped x_0 as ours.

    At t = 1, 2 both take sqrt(1 - abar) of a float32 abar (~1e-4 relative): in eq. 12's
    direction term and, clipped, in eps from x_0 (kept bit for bit for eps models). With eps
    ~ 1/sigma ~ 70 there (a random x_0 or a clipped one far from x_t) both are up to ~4e-4
    from float64; elsewhere they agree within 1e-4."""
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler

    cfg = DiffusionConfig(prediction_type=kind)
    coeffs = make_coefficients(cfg)
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=clip,
        set_alpha_to_one=True,
        prediction_type=DIFFUSERS_NAME[kind],
    )
    sched.set_timesteps(1000)
    rng = np.random.default_rng(1)
    step = samplers.get("ddim", eta).apply
    for t in (0, 1, 2, 500, 998, 999):
        output, x, z = (rng.normal(size=(2, *SHAPE)).astype(np.float32) for _ in range(3))
        theirs = sched.step(
            to_torch(output), t, to_torch(x), eta=eta, use_clipped_model_output=True, variance_noise=to_torch(z)
        )
        ours = step(output, x, jnp.full((2,), t), z, coeffs, clip=clip, prev_x0=None, has_prev=False)
        np.testing.assert_allclose(ours[1], from_torch(theirs.pred_original_sample), rtol=1e-4, atol=1e-5)
        tol = 1e-3 if t in (1, 2) else 1e-4
        np.testing.assert_allclose(ours[0], from_torch(theirs.prev_sample), rtol=1e-4, atol=tol)


@pytest.mark.parametrize("kind", ["v", "x0"])
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_2m_sde"])
@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_chain_matches_diffusers_scheduler(kind, name, clip):
    """DPMSolverMultistepScheduler (as tests/test_dpm_solver.py sets it up) fed the same random
    output at each of 10 steps: x after every step, the previous x_0 carried as in our scan."""
    pytest.importorskip("diffusers")
    steps = 10
    sched = diffusers_dpm_solver(steps, clip=clip, sde=name.endswith("sde"), prediction_type=DIFFUSERS_NAME[kind])
    coeffs = make_coefficients(DiffusionConfig(prediction_type=kind), steps, "linspace")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    theirs, prev_x0, step = to_torch(x), jnp.zeros_like(x), samplers.get(name).apply
    for j, t in enumerate(sched.timesteps):
        i = steps - 1 - j
        output, z = (rng.normal(size=(2, *SHAPE)).astype(np.float32) for _ in range(2))
        theirs = sched.step(to_torch(output), t, theirs, variance_noise=to_torch(z)).prev_sample
        x, prev_x0 = step(output, x, jnp.full((2,), i), z, coeffs, clip=clip, prev_x0=prev_x0, has_prev=j > 0)
        np.testing.assert_allclose(x, from_torch(theirs), rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("highest_precision")
def test_a_v_prediction_diffusers_checkpoint_loads_and_samples_as_diffusers(tmp_path, monkeypatch):
    """A UNet2DModel saved with DDPMScheduler(prediction_type="v_prediction"): it loads (it was
    refused before) as a "v" model, and its 10-step chain is diffusers' loop with our noise."""
    torch = pytest.importorskip("torch")
    from diffusers import DDPMScheduler
    from diffusers.schedulers import scheduling_ddpm

    from .helpers import random_diffusers_unet

    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    T = 10
    unet = random_diffusers_unet(UNET, seed=3)
    unet.save_pretrained(tmp_path / "model")
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", prediction_type="v_prediction")
    scheduler.save_pretrained(tmp_path / "model")
    model = Diffusion.from_pretrained(tmp_path / "model", chunk_size=T // 2)
    assert model.diffusion_config == DiffusionConfig(
        num_diffusion_timesteps=T, model_var_type="fixedsmall", prediction_type="v"
    )
    ours = {s.step: np.asarray(s.x) for s in model.denoise_steps(N, key=KEY)}

    noise = {t: to_torch(per_sample_normal(KEY, DENOISE, IDS, t, SHAPE)) for t in range(T)}
    current = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: noise[current["t"]])
    scheduler.set_timesteps(T)
    x, theirs = to_torch(initial_noise(KEY, IDS, SHAPE)), {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            current["t"] = int(t)
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
            theirs[int(t)] = from_torch(x)
    for step in (T // 2, 0):
        np.testing.assert_allclose(ours[step], theirs[step], atol=1e-4)
    assert (np.abs(theirs[0]) < 0.999).mean() > 0.3  # mostly unclipped values: a real comparison
