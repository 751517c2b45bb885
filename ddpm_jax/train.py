"""Training as pure functions: the state, Algorithm 1's loss, one jitted step, EMA.

`TrainState` is a pytree holding everything a run needs to continue exactly:
params, EMA params, the optax state, the step and the PRNG key (raw uint32 key
data, so it saves as a plain array). Batches are drawn inside the step from
the whole dataset array, so the data order is a function of the key alone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .checks import check_float, check_int
from .coefficients import Coefficients
from .config import UNetConfig
from .diffusion import at, q_sample
from .sharding import DATA
from .unet import UNet, init_params


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are the release's (cifar10)."""

    learning_rate: float = 2e-4
    warmup_steps: int = 5000
    decay_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    batch_size: int = 128
    random_flip: bool = True
    seed: int = 0

    def __post_init__(self):
        """Refuse values that would train on nothing or diverge silently."""
        check_float("learning_rate", self.learning_rate, 0.0, 1.0, open_lo=True)
        check_float("grad_clip", self.grad_clip, 0.0, 1e6, open_lo=True)
        check_float("ema_decay", self.ema_decay, 0.0, 1.0)
        for name, lo in (("warmup_steps", 0), ("decay_steps", 0), ("batch_size", 1), ("seed", 0)):
            check_int(name, getattr(self, name), lo, 2**31 - 1)


TRAIN_PRESETS = {
    "cifar10": TrainConfig(),
    "lsun": TrainConfig(learning_rate=2e-5, batch_size=64),
    # Small and fast on a CPU: short warmup, an EMA averaging over ~1k steps,
    # and no flips (a mirrored digit is not a digit).
    "digits": TrainConfig(
        learning_rate=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        batch_size=64,
        random_flip=False,
    ),
}


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    params: Any
    ema_params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer updates done
    key: jax.Array  # uint32 raw key data, advanced every step


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Adam after clipping the global gradient norm, lr warmed up linearly.

    The release: lr * min(step / warmup, 1), clip_by_global_norm(grad_clip). With `decay_steps`
    > 0 the lr is also multiplied by max(1 - step / decay_steps, 0), annealing it linearly to 0
    as Salimans & Ho (2022) do in each distillation round.
    """
    warmup = max(int(cfg.warmup_steps), 1)
    decay = cfg.decay_steps

    def schedule(step):
        lr = cfg.learning_rate * jnp.minimum((step + 1) / warmup, 1.0)
        return lr * jnp.maximum(1.0 - step / decay, 0.0) if decay else lr

    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(schedule))


def init_state(unet_config: UNetConfig, cfg: TrainConfig, params=None) -> TrainState:
    """Fresh params from seed (or `params`, say a teacher's), EMA = params, step 0."""
    key = jax.random.key(cfg.seed)
    init_key, run_key = jax.random.split(key)
    params = init_params(unet_config, init_key) if params is None else params
    return TrainState(
        params=params,
        ema_params=params,
        opt_state=make_optimizer(cfg).init(params),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(run_key),
    )


def ema_update(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def diffusion_loss(params, model: UNet, x0, key, coeffs: Coefficients, train: bool = True):
    """L_simple, Alg. 1: E_{t, eps} || eps - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, t) ||^2,
    with the target the config's prediction type names: eps, v = alpha eps - sigma x_0
    (Salimans & Ho 2022, Sec. 4; an x_0 loss weighted by SNR + 1) or x_0.

    t is uniform over all T steps (0-based); the mean is over pixels and batch.
    """
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    n = x0.shape[0]
    t = jax.random.randint(t_key, (n,), 0, coeffs.num_timesteps, dtype=jnp.int32)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = q_sample(x0, t, noise, coeffs)
    target = at(coeffs.target_from_eps, t) * noise + at(coeffs.target_from_x0, t) * x0
    output = model.apply({"params": params}, x_t, t, train=train, rngs={"dropout": dropout_key})
    return jnp.mean((target - output) ** 2)


def sample_batch(data: jax.Array, key, batch_size: int, random_flip: bool) -> jax.Array:
    """`batch_size` images drawn uniformly (with replacement), optionally h-flipped."""
    idx_key, flip_key = jax.random.split(key)
    x = data[jax.random.randint(idx_key, (batch_size,), 0, data.shape[0])]
    if random_flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (batch_size, 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x


@functools.lru_cache(maxsize=8)
def make_train_step(
    unet_config: UNetConfig, cfg: TrainConfig, mesh: Mesh | None = None, loss: Callable = diffusion_loss
) -> Callable[[TrainState, jax.Array, Any], tuple[TrainState, dict]]:
    """A jitted (state, data, inputs) -> (state, metrics) for one update of
    `loss(params, model, x0, key, inputs)`: `diffusion_loss`, whose inputs are the
    `Coefficients`, or another (`distill.distillation_loss`).

    With a `mesh` (state and data replicated on it, see `sharding`), the batch
    is sharded over its 'data' axis and XLA reduces the gradients across
    devices: data parallelism with the same numbers as one device.
    Cached per (config, train config, mesh), so a resumed run in the same
    process reuses the compiled step.
    """
    model = UNet(unet_config)
    tx = make_optimizer(cfg)
    if mesh is not None and cfg.batch_size % mesh.size:
        raise ValueError(
            f"batch size {cfg.batch_size} does not split over {mesh.size} devices; use a multiple of {mesh.size}"
        )

    @jax.jit
    def train_step(state: TrainState, data, inputs):
        key, data_key, loss_key = jax.random.split(jax.random.wrap_key_data(state.key), 3)
        x0 = sample_batch(data, data_key, cfg.batch_size, cfg.random_flip)
        if mesh is not None:
            x0 = jax.lax.with_sharding_constraint(x0, NamedSharding(mesh, P(DATA)))
        value, grads = jax.value_and_grad(loss)(state.params, model, x0, loss_key, inputs)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = dataclasses.replace(
            state,
            params=params,
            ema_params=ema_update(state.ema_params, params, cfg.ema_decay),
            opt_state=opt_state,
            step=state.step + 1,
            key=jax.random.key_data(key),
        )
        return new, {"loss": value, "grad_norm": optax.tree.norm(grads)}

    return train_step
