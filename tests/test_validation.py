"""Every number from outside (config fields, safetensors
metadata, diffusers' JSON, weights, API arguments, CLI flags, seeds) is checked
before it is used, with the field, the value and the valid range in the error,
and before anything large is allocated."""

from __future__ import annotations

import dataclasses
import json
import time
import tracemalloc

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from ddpm_jax import Diffusion
from ddpm_jax.cli import main
from ddpm_jax.config import UNET_PRESETS, DiffusionConfig, UNetConfig, config_to_dict
from ddpm_jax.convert.diffusers_format import (
    diffusion_config_from_diffusers,
    load_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from ddpm_jax.convert.mapping import key_table, to_flax
from ddpm_jax.convert.port import PORT_TABLE, flax_to_port
from ddpm_jax.memory import check_batch, sample_bytes
from ddpm_jax.pipeline import as_key
from ddpm_jax.sampling import initial_noise
from ddpm_jax.weights import FORMAT, flatten_params, load_weights, unflatten_params

from .helpers import CONVERT_UNET, TINY_DIFFUSION, TINY_UNET, random_params


def peak_bytes(fn):
    """(what fn raised, the peak bytes it allocated through Python/numpy)."""
    tracemalloc.start()
    try:
        with pytest.raises((ValueError, TypeError)) as err:
            fn()
        return err.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "cls, field, value, error, says",
    [
        (DiffusionConfig, "num_diffusion_timesteps", 10**9, ValueError, "expected 2 <= .* <= 100000"),
        (DiffusionConfig, "num_diffusion_timesteps", 1000.0, TypeError, "must be an int, got float"),
        (DiffusionConfig, "beta_start", 0.0, ValueError, r"beta_start=0.0 .* in \(0, 1\]"),
        (DiffusionConfig, "beta_end", 1.5, ValueError, r"beta_end=1.5 .* in \(0, 1\]"),
        (DiffusionConfig, "beta_end", float("nan"), ValueError, r"beta_end=nan .* finite"),
        (DiffusionConfig, "beta_start", "1e-4", TypeError, "beta_start must be a number, got str"),
        (DiffusionConfig, "beta_schedule", "cosine", ValueError, "unknown beta schedule 'cosine'; valid: linear"),
        (DiffusionConfig, "prediction_type", "x", ValueError, "unknown prediction_type 'x'; valid: eps, v, x0"),
        (UNetConfig, "resolution", 10**6, ValueError, r"resolution=1000000 .* <= 4096"),
        (UNetConfig, "resolution", True, TypeError, "must be an int, got the bool"),
        (UNetConfig, "in_channels", 0, ValueError, r"in_channels=0 .* expected 1 <="),
        (UNetConfig, "ch", 10**6, ValueError, r"ch=1000000 .* <= 4096"),
        (UNetConfig, "ch_mult", (), ValueError, r"ch_mult=\[\] has 0 levels; expected 1 to 8"),
        (UNetConfig, "ch_mult", (1, 0), ValueError, r"ch_mult\[1\]=0 is out of range"),
        (UNetConfig, "ch_mult", "12", TypeError, "ch_mult must be a list of ints, got str"),
        (UNetConfig, "num_res_blocks", -1, ValueError, r"num_res_blocks=-1 .* expected 0 <="),
        (UNetConfig, "attn_resolutions", (5,), ValueError, r"among the resolutions of the levels, \[32, 16, 8, 4\]"),
        (UNetConfig, "dropout", 1.0, ValueError, r"dropout=1.0 .* \[0, 1\)"),
    ],
)
def test_every_config_field_is_checked_at_construction(cls, field, value, error, says):
    with pytest.raises(error, match=f"{cls.__name__}.{field}|{says}") as err:
        dataclasses.replace(cls(), **{field: value})
    assert err.match(says)


def _tiny_file(path, diffusion: dict, unet: dict, params=None):
    """A ddpm_jax params file with the given config metadata (random params of the tiny UNet)."""
    flat = flatten_params(params or random_params(TINY_UNET))
    save_file(
        {k: np.asarray(v, np.float32) for k, v in flat.items()},
        path,
        metadata={"format": FORMAT, "diffusion_config": json.dumps(diffusion), "unet_config": json.dumps(unet)},
    )
    return path


@pytest.mark.parametrize(
    "diffusion, unet, says",
    [
        ({"num_diffusion_timesteps": 10**9}, {}, "num_diffusion_timesteps=1000000000 is out of range"),
        ({"beta_end": 2.0}, {}, "beta_end=2.0 is out of range"),
        ({"prediction_type": "v_prediction"}, {}, "unknown prediction_type 'v_prediction'; valid: eps, v, x0"),
        ({}, {"resolution": 8.5}, "resolution must be an int, got float 8.5"),
        ({}, [1, 2], "must be a JSON object of fields, got list"),
        ({}, None, "must be a JSON object of fields, got NoneType"),
    ],
)
def test_safetensors_metadata_is_checked_before_anything_is_allocated(tmp_path, diffusion, unet, says):
    good_d, good_u = config_to_dict(TINY_DIFFUSION), config_to_dict(TINY_UNET)
    d = {**good_d, **diffusion}
    u = {**good_u, **unet} if isinstance(unet, dict) else unet
    path = _tiny_file(tmp_path / "m.safetensors", d, u)
    err, peak = peak_bytes(lambda: load_weights(path))
    assert "has an invalid config in its metadata" in str(err) and says in str(err) and str(path) in str(err)
    assert peak < 20 * 2**20, peak  # the tiny params, not T-sized tables


@pytest.fixture(scope="module")
def model():
    """The tiny model with random params (no Flax init to compile)."""
    return Diffusion(
        diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=random_params(TINY_UNET), chunk_size=8
    )


def test_nan_or_inf_weights_are_refused_at_load(tmp_path):
    params = random_params(TINY_UNET)
    flat = {k: np.array(v) for k, v in flatten_params(params).items()}
    flat["conv_out/bias"][0] = np.nan
    flat["mid/attn_1/q/kernel"][1, 2] = np.inf
    path = _tiny_file(
        tmp_path / "nan.safetensors", config_to_dict(TINY_DIFFUSION), config_to_dict(TINY_UNET), unflatten_params(flat)
    )
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 array\(s\): conv_out/bias, mid/attn_1/q"):
        load_weights(path)
    # The converters' door too: a port state_dict with an infinite weight.
    state = flax_to_port(params, TINY_UNET)
    state["conv_in.weight"] = state["conv_in.weight"].copy()
    state["conv_in.weight"][0, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"port.ckpt holds NaN or infinite values in 1 array\(s\): conv_in/kernel"):
        to_flax(state, key_table(PORT_TABLE, TINY_UNET), TINY_UNET, source="port.ckpt", config_label="tiny")


GOOD = unet_config_to_diffusers(CONVERT_UNET)


@pytest.mark.parametrize(
    "config, says",
    [
        ([GOOD], "expected a JSON object of settings, got list"),
        (None, "expected a JSON object of settings, got NoneType"),
        ({**GOOD, "block_out_channels": []}, "block_out_channels=[] (need a non-empty list of positive ints)"),
        ({**GOOD, "block_out_channels": [0, 0, 0]}, "block_out_channels=[0, 0, 0] (need a non-empty list"),
        ({**GOOD, "layers_per_block": 0}, "layers_per_block=0 (need an int >= 1)"),
        ({**GOOD, "sample_size": 0}, "sample_size=0 (need one positive int"),
        ({**GOOD, "sample_size": 2**20}, "UNetConfig.resolution=1048576 is out of range"),
        ({**GOOD, "in_channels": "3"}, "UNetConfig.in_channels must be an int, got str '3'"),
        ({**GOOD, "down_block_types": 5}, "down_block_types=5, up_block_types="),
    ],
)
def test_diffusers_config_json_is_checked(tmp_path, config, says):
    with pytest.raises(ValueError) as err:
        unet_config_from_diffusers(config, "config.json")
    assert str(err.value).startswith("config.json: ") and says in str(err.value)
    # The same through a folder, before any weight is read (there are none).
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"never read")
    with pytest.raises(ValueError, match="config.json: "):
        load_diffusers(tmp_path)


@pytest.mark.parametrize(
    "config, says",
    [
        ([], "expected a JSON object of settings, got list"),
        ({"num_train_timesteps": 10**9}, "num_diffusion_timesteps=1000000000 is out of range"),
        ({"beta_start": -1.0}, "beta_start=-1.0 is out of range"),
        ({"beta_schedule": ["linear"]}, "beta_schedule=['linear'] (need one of"),
    ],
)
def test_scheduler_config_json_is_checked(config, says):
    with pytest.raises(ValueError) as err:
        diffusion_config_from_diffusers(config, "scheduler_config.json")
    assert str(err.value).startswith("scheduler_config.json: ") and says in str(err.value)


def test_a_unet_diffusers_cannot_run_has_no_diffusers_form():
    with pytest.raises(ValueError, match="needs num_res_blocks >= 1; this config has 0"):
        unet_config_to_diffusers(UNET_PRESETS["digits"])


def test_a_request_that_cannot_fit_is_refused_before_allocating(model):
    err = pytest.raises(ValueError, check_batch, 10**7, UNET_PRESETS["cifar10"]).value
    assert "n=10000000 samples need at least" in str(err) and "sample in batches" in str(err)
    assert sample_bytes(UNET_PRESETS["cifar10"]) > 2e6  # 2.5 MB: x, pred_x0, the skips, mid attention
    start = time.monotonic()
    err, peak = peak_bytes(lambda: model.denoise(10**9))
    assert "n=1000000000 samples need at least" in str(err) and "could fit in one call" in str(err)
    assert peak < 10 * 2**20 and time.monotonic() - start < 10
    check_batch(256, UNET_PRESETS["cifar10"])  # a normal batch passes


@pytest.mark.parametrize(
    "call, error, says",
    [
        (lambda m: m.respaced(5, "ddim", eta=float("nan")), ValueError, r"eta=nan is out of range; .* \[0, 1\]"),
        (lambda m: m.respaced(5, "ddim", eta=-0.5), ValueError, r"eta=-0.5 is out of range"),
        (lambda m: m.respaced(5, "ddpm", eta=0.7), ValueError, r"sampler 'ddpm' has no eta \(only ddim"),
        (lambda m: m.respaced(0), ValueError, "steps=0 is out of range; expected 1 <= steps <= 40"),
        (
            lambda m: m.denoise(2, x=np.full((2, 8, 8, 1), np.nan, np.float32), curr_step=5),
            ValueError,
            "x holds NaN or infinite values",
        ),
        (lambda m: m.diffuse(1, x=np.full((1, 8, 8, 1), np.inf, np.float32)), ValueError, "x holds NaN or infinite"),
        (lambda m: m.denoise(0), ValueError, "n=0 is out of range"),
        (lambda m: m.denoise(2.5), TypeError, "n must be an int, got float"),
        (
            lambda m: m.denoise(2, key=-1),
            ValueError,
            r"seed=-1 is out of range; expected 0 <= seed <= 18446744073709551615",
        ),
        (lambda m: m.denoise(2, key=2**64), ValueError, "seed=18446744073709551616 is out of range"),
        (lambda m: m.denoise(2, key=1.5), TypeError, r"key must be an int seed in \[0, 2\*\*64\)"),
    ],
)
def test_api_arguments_are_checked(model, call, error, says):
    with pytest.raises(error, match=says):
        call(model)


def test_every_seed_gives_its_own_images_and_old_seeds_keep_theirs(model):
    ids = jax.numpy.arange(2, dtype=jax.numpy.int32)

    def noise(seed):
        return np.asarray(initial_noise(as_key(seed), ids, (8, 8, 1)))

    # jax.random.key keeps 32 bits without x64: 2**32 and 0 were the same key.
    same_before = np.asarray(initial_noise(jax.random.key(2**32), ids, (8, 8, 1)))
    np.testing.assert_array_equal(same_before, noise(0))
    seeds = [0, 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**63, 2**64 - 1]
    draws = [noise(s).tobytes() for s in seeds]
    assert len(set(draws)) == len(seeds)
    for s in (0, 1, 7, 2**31, 2**32 - 1):  # seeds that already worked give the same key as before
        np.testing.assert_array_equal(jax.random.key_data(as_key(s)), jax.random.key_data(jax.random.key(s)))
    np.testing.assert_array_equal(
        model.denoise(1, n_steps=2, key=0), model.denoise(1, n_steps=2, key=jax.random.key(0))
    )


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--steps", "0"], "--steps=0 is out of range; expected 1 <= --steps <= 100000"),
        (["--n", "0"], "--n=0 is out of range"),
        (["--batch", "0"], "--batch=0 is out of range"),
        (["--sampler", "ddim", "--eta", "nan"], "eta=nan is out of range"),
        (["--sampler", "dpmpp_2m_sde", "--eta", "0.5"], "sampler 'dpmpp_2m_sde' has no eta (only ddim"),
        (["--seed", "-1"], "seed=-1 is out of range"),
        (["--seed", str(2**64)], "seed=18446744073709551616 is out of range"),
    ],
)
def test_sample_flags_are_checked_before_the_model_loads(tmp_path, capsys, flags, says):
    out = tmp_path / "out"
    # An unknown model: the flag's error comes first, so the flag was checked before loading.
    assert main(["sample", "--model", "no_such_model", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
