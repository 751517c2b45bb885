"""The UNet's run shapes: shipped for the presets under a CPU's default `Ops`, so a first process
loads a model of a released architecture without tracing the UNet."""

import dataclasses
import json

import jax
import pytest

from ddpm_jax import Diffusion, run_layout, stored_programs, weights
from ddpm_jax.config import UNET_PRESETS
from ddpm_jax.ops import Ops

REGENERATE = 'python -c "from ddpm_jax.run_layout import write_shipped; write_shipped()"'


def test_the_shipped_run_shapes_are_what_a_trace_gives_for_every_preset_and_default_ops():
    shipped = json.loads(run_layout.SHIPPED.read_text())
    want = {
        run_layout.fingerprint(config, ops): (config, ops)
        for config in UNET_PRESETS.values()
        for ops in run_layout.shipped_ops()
    }
    assert set(shipped) == set(want), f"the shipped run shapes are stale; regenerate them: {REGENERATE}"
    for key, (config, ops) in want.items():
        assert shipped[key] == run_layout.trace_shapes(config, ops), f"{key} is stale; regenerate: {REGENERATE}"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """As a first process on a machine: an empty store, nothing held in memory, and no trace allowed."""
    monkeypatch.setattr(stored_programs, "folder", lambda: tmp_path)
    run_layout.run_shapes.cache_clear()
    weights.expected_shapes.cache_clear()
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: pytest.fail("the UNet was traced"))
    yield tmp_path
    run_layout.run_shapes.cache_clear()
    weights.expected_shapes.cache_clear()


def test_a_preset_architecture_needs_no_trace_whatever_its_dropout(fresh):
    for dropout in (0.1, 0.0, 0.3):
        config = dataclasses.replace(UNET_PRESETS["cifar10"], dropout=dropout)
        for ops in run_layout.shipped_ops():
            shapes = run_layout.run_shapes(config, ops)
            kernel = shapes["down_0"]["block_0"]["conv1"]["kernel"]
            assert kernel.shape == ((3, 3, 128, 128) if ops == Ops() else (6, 6, 128, 128))  # F(4x4) at 32x32
        assert weights.expected_shapes(config)["conv_in/kernel"] == (3, 3, 3, 128)
    assert not list(fresh.iterdir())  # nothing traced, so nothing kept


def test_the_bundled_model_loads_and_lays_out_its_params_without_a_trace(fresh):
    model = Diffusion.from_pretrained("digits")
    for conv in ("xla", "auto", "winograd"):
        run = model.respaced(model.num_timesteps, conv=conv).run_params
        assert {tuple(s.shape) for s in jax.tree.leaves(run)} >= {(3, 3, 32, 32)}
    assert not list(fresh.iterdir())
