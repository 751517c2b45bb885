"""Training math: Alg. 1's loss goes down, EMA follows its formula, warmup and clipping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm_jax.coefficients import make_coefficients
from ddpm_jax.data import load_digits_images
from ddpm_jax.train import (
    diffusion_loss,
    ema_update,
    init_state,
    make_optimizer,
    make_train_step,
    sample_batch,
)
from ddpm_jax.unet import UNet

from .helpers import MINI_TRAIN, ONE_LEVEL_UNET, TINY_DIFFUSION


@pytest.fixture(scope="module")
def state0():
    """A fresh TrainState (its params are Flax's init: compiled once for the module)."""
    return init_state(ONE_LEVEL_UNET, MINI_TRAIN)


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss():
    data = jnp.asarray(load_digits_images(8))
    coeffs = make_coefficients(TINY_DIFFUSION)
    state = init_state(ONE_LEVEL_UNET, MINI_TRAIN)
    step = make_train_step(ONE_LEVEL_UNET, MINI_TRAIN)
    losses = []
    for _ in range(300):
        state, m = step(state, data, coeffs)
        losses.append(float(m["loss"]))
    assert int(state.step) == 300
    first, last = np.mean(losses[:30]), np.mean(losses[-50:])
    assert np.isfinite(losses).all()
    assert last < 0.6 * first, (first, last)


def test_ema_update_matches_its_formula():
    ema = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
    params = {"a": jnp.array([5.0, -2.0]), "b": {"c": jnp.array(0.0)}}
    out = ema_update(ema, params, 0.9)
    np.testing.assert_allclose(out["a"], [0.9 * 1 + 0.1 * 5, 0.9 * 2 + 0.1 * -2], rtol=1e-6)
    np.testing.assert_allclose(out["b"]["c"], 0.9 * 3.0, rtol=1e-6)


def test_train_step_updates_ema_from_new_params(state0, digits, mini_train_step):
    """`mini_train_step`: make_train_step(ONE_LEVEL_UNET, MINI_TRAIN), compiled once per run."""
    coeffs = make_coefficients(TINY_DIFFUSION)
    s0 = state0
    s1, _ = mini_train_step(s0, digits, coeffs)
    d = MINI_TRAIN.ema_decay
    # float32 numpy, op by op as JAX would run it eagerly (without compiling each op for each shape)
    want = jax.tree.map(lambda e, p: d * np.asarray(e) + (1 - d) * np.asarray(p), s0.ema_params, s1.params)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(s1.ema_params)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(np.asarray(s1.key), np.asarray(s0.key))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)))


def test_warmup_is_linear_then_flat_and_grads_are_clipped():
    cfg = dataclasses.replace(MINI_TRAIN, learning_rate=1e-2, warmup_steps=4, grad_clip=1.0)
    tx = make_optimizer(cfg)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    g = {"w": jnp.array([300.0, -400.0, 0.0])}
    # With a constant gradient Adam's step is lr * sign(g): its size is the lr in use.
    sizes = []
    for _ in range(6):
        upd, state = tx.update(g, state, params)
        sizes.append(np.asarray(upd["w"]))
    want = [cfg.learning_rate * min((s + 1) / 4, 1.0) for s in range(6)]
    np.testing.assert_allclose([-u[0] for u in sizes], want, rtol=1e-4)
    np.testing.assert_allclose([u[1] for u in sizes], want, rtol=1e-4)
    clip = optax.clip_by_global_norm(cfg.grad_clip)
    clipped, _ = clip.update(g, clip.init(params))
    np.testing.assert_allclose(clipped["w"], [0.6, -0.8, 0.0], rtol=1e-6)
    # The chain clips before Adam: its first moment holds the clipped gradient.
    _, st = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(st[1][0].mu["w"], 0.1 * np.array([0.6, -0.8, 0.0]), rtol=1e-5)


def test_decay_anneals_the_lr_linearly_to_zero_after_warmup():
    cfg = dataclasses.replace(MINI_TRAIN, learning_rate=1e-2, warmup_steps=2, decay_steps=5)
    tx = make_optimizer(cfg)
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    sizes = []
    for _ in range(7):
        upd, state = tx.update({"w": jnp.array([0.5])}, state, params)
        sizes.append(-float(upd["w"][0]))
    # Adam's step under a constant gradient is the lr in use: warmup x (1 - step / decay), then 0
    want = [cfg.learning_rate * min((s + 1) / 2, 1.0) * max(1 - s / 5, 0.0) for s in range(7)]
    np.testing.assert_allclose(sizes, want, rtol=1e-4, atol=1e-9)
    assert sizes[5] == sizes[6] == 0.0


def test_loss_is_the_eps_mse_at_uniform_t(state0, digits):
    coeffs = make_coefficients(TINY_DIFFUSION)
    model = UNet(ONE_LEVEL_UNET)
    params = state0.params
    x0 = digits[:4]
    key = jax.random.key(3)
    loss = jax.jit(lambda p: diffusion_loss(p, model, x0, key, coeffs, train=False))(params)

    @jax.jit  # one program, not each op compiled on its own
    def by_hand(params):
        t_key, noise_key, _ = jax.random.split(key, 3)
        t = jax.random.randint(t_key, (4,), 0, coeffs.num_timesteps, dtype=jnp.int32)
        noise = jax.random.normal(noise_key, x0.shape)
        abar = coeffs.alphas_cumprod[t][:, None, None, None]
        x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise
        eps = model.apply({"params": params}, x_t, t)
        return jnp.mean((noise - eps) ** 2)

    assert float(loss) == pytest.approx(float(by_hand(params)), rel=1e-5)


def test_sample_batch_draws_from_data_and_flips():
    data = jnp.arange(4 * 2 * 3 * 1, dtype=jnp.float32).reshape(4, 2, 3, 1)
    plain = np.asarray(sample_batch(data, jax.random.key(0), 64, random_flip=False))
    rows = {tuple(x.ravel()) for x in plain}
    assert rows <= {tuple(x.ravel()) for x in np.asarray(data)}
    flipped = np.asarray(sample_batch(data, jax.random.key(0), 64, random_flip=True))
    mirrored = {tuple(x[:, ::-1].ravel()) for x in np.asarray(data)}
    got = {tuple(x.ravel()) for x in flipped}
    assert got & mirrored and got - mirrored
