"""Training checkpoints: exact round trip, atomic and kept, corruption detected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    restore_state,
    save_checkpoint,
)
from ddpm_jax.train import TrainState


def _state(step, scale=1.0):
    params = {"conv": {"kernel": jnp.full((3, 3, 1, 2), scale), "bias": jnp.arange(2.0)}}
    return TrainState(
        params=params,
        ema_params=jax.tree.map(lambda p: p * 0.5, params),
        opt_state=(jnp.asarray(step, jnp.int32), {"mu": params}),
        step=jnp.asarray(step, jnp.int32),
        key=jax.random.key_data(jax.random.key(step)),
    )


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
    state = _state(7, scale=0.3)
    path = save_checkpoint(tmp_path, state, {"hello": [1, 2]})
    assert path == checkpoint_path(tmp_path, 7)
    run, flat, step = read_checkpoint(path)
    assert run == {"hello": [1, 2]} and step == 7
    _assert_same(restore_state(flat, _state(0)), state)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_keeps_the_newest_and_never_overwrites(tmp_path):
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _state(s), {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003.safetensors", "ckpt-00000004.safetensors"]
    before = checkpoint_path(tmp_path, 4).read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_checkpoint(tmp_path, _state(4, scale=9.0), {})
    assert checkpoint_path(tmp_path, 4).read_bytes() == before


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage"])
def test_corruption_is_a_clear_error_and_the_previous_one_survives(tmp_path, damage):
    save_checkpoint(tmp_path, _state(1), {})
    bad = save_checkpoint(tmp_path, _state(2), {})
    raw = bytearray(bad.read_bytes())
    if damage == "flip_byte":
        raw[-5] ^= 0xFF  # inside the tensor data: only the digest notices
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = bytearray(b"not a checkpoint at all")
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"ckpt-00000002.*(corrupt|unreadable).*left in place"):
        read_checkpoint(bad)
    assert bad.read_bytes() == bytes(raw)
    _, flat, step = read_checkpoint(checkpoint_path(tmp_path, 1))
    assert step == 1
    _assert_same(restore_state(flat, _state(0)), _state(1))


def test_mismatched_state_names_the_leaves(tmp_path):
    _, flat, _ = read_checkpoint(save_checkpoint(tmp_path, _state(3), {}))
    other = _state(0)
    other = TrainState(
        params={"conv": {"kernel": jnp.zeros((3, 3, 1, 4)), "bias": jnp.zeros(2)}},
        ema_params=other.ema_params,
        opt_state=other.opt_state,
        step=other.step,
        key=other.key,
    )
    with pytest.raises(ValueError, match=r"mismatched: \.params\['conv'\]\['kernel'\]"):
        restore_state(flat, other)
    with pytest.raises(ValueError, match="missing"):
        restore_state({k: v for k, v in flat.items() if "bias" not in k}, _state(0))
