"""Params on disk: the safetensors round trip, config metadata, and the errors of files that are
corrupt, foreign, or do not fit their config."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from ddpm_jax import Diffusion
from ddpm_jax.weights import flatten_params, load_weights

from .helpers import TINY_DIFFUSION, TINY_UNET


def test_params_round_trip_through_safetensors(saved, tiny_model):
    dcfg, ucfg, params = load_weights(saved)
    assert dcfg == TINY_DIFFUSION and ucfg == TINY_UNET
    a, b = flatten_params(params), flatten_params(tiny_model.params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    again = Diffusion.from_pretrained(saved, chunk_size=8)
    np.testing.assert_array_equal(again.denoise(2, n_steps=5, key=1), tiny_model.denoise(2, n_steps=5, key=1))
    assert again.num_timesteps == 40 and again.model.config == TINY_UNET


def test_config_metadata_is_json(saved):
    from safetensors import safe_open

    with safe_open(saved, framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["unet_config"])["ch_mult"] == [1, 2]


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path, saved):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Diffusion.from_pretrained(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"conv.weight": np.zeros((3, 3), np.float32)}, foreign)
    with pytest.raises(ValueError, match="not ddpm_jax params.*ddpm-jax convert"):
        Diffusion.from_pretrained(foreign)
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        Diffusion.from_pretrained("no_such_model")


def test_params_that_do_not_fit_the_config_are_named(tiny_params, tmp_path):
    params = dict(tiny_params)
    params.pop("conv_out")
    with pytest.raises(ValueError, match="2 missing: conv_out/bias, conv_out/kernel"):
        Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=params)
    # The UNet itself no longer checks shapes (unet._Params): Diffusion is where a wrong one stops.
    params = {**tiny_params, "conv_in": {**tiny_params["conv_in"], "kernel": tiny_params["conv_in"]["kernel"][..., :3]}}
    with pytest.raises(ValueError, match=r"1 mis-shaped: conv_in/kernel: \(3, 3, 1, 3\) != \(3, 3, 1, 32\)"):
        Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=params)
    model = Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params)
    with pytest.raises(ValueError, match="conv_in/kernel"):
        model.with_params(params)
