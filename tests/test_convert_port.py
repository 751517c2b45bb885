"""The port's state_dict <-> our params: the key table, layouts, strictness, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_jax.config import UNET_PRESETS
from ddpm_jax.convert.mapping import key_table, theirs_from_ours
from ddpm_jax.convert.port import PORT_TABLE, flax_to_port, matching_presets, port_to_flax
from ddpm_jax.weights import flatten_params

from .helpers import CONVERT_UNET, random_params, zero_state_dict


def port_shapes(config):
    """The port's key -> shape for `config`."""
    return {
        k.theirs: theirs_from_ours(k.kind, k.leaf, np.broadcast_to(0, k.shape)).shape
        for k in key_table(PORT_TABLE, config)
    }


@pytest.mark.parametrize("config", [CONVERT_UNET, UNET_PRESETS["cifar10"]], ids=["tiny", "cifar10"])
def test_round_trip_is_exact(config):
    params = random_params(config, seed=3)
    state = flax_to_port(params, config)
    back = flatten_params(port_to_flax(state, config))
    flat = flatten_params(params)
    assert back.keys() == flat.keys()
    assert all(np.array_equal(back[k], flat[k]) for k in flat)


def test_layouts_follow_the_port():
    """OIHW convs, (out, in) Dense, 1x1 convs for q/k/v/proj_out/nin_shortcut, GroupNorm weight."""
    params = random_params(CONVERT_UNET, seed=4)
    state = flax_to_port(params, CONVERT_UNET)
    conv = params["down_0"]["block_0"]["conv1"]["kernel"]  # HWIO
    np.testing.assert_array_equal(state["down.0.block.0.conv1.weight"], conv.transpose(3, 2, 0, 1))
    dense = params["temb"]["dense_1"]["kernel"]
    np.testing.assert_array_equal(state["temb.dense.1.weight"], dense.T)
    q = params["mid"]["attn_1"]["q"]["kernel"]
    np.testing.assert_array_equal(state["mid.attn_1.q.weight"], q.T[:, :, None, None])
    nin = params["up_0"]["block_0"]["nin_shortcut"]["kernel"]
    np.testing.assert_array_equal(state["up.0.block.0.nin_shortcut.weight"], nin.T[:, :, None, None])
    np.testing.assert_array_equal(state["norm_out.weight"], params["norm_out"]["scale"])
    # up.{i} is the resolution level: level 1 of three upsamples, level 0 does not.
    assert "up.1.upsample.conv.weight" in state and "up.0.upsample.conv.weight" not in state
    assert "down.2.downsample.conv.weight" not in state


def test_key_families_of_the_cifar10_checkpoint():
    keys = set(port_shapes(UNET_PRESETS["cifar10"]))
    assert len(keys) == 328
    for k in (
        "temb.dense.0.weight",
        "conv_in.bias",
        "down.1.attn.1.proj_out.weight",
        "down.0.downsample.conv.weight",
        "mid.block_1.temb_proj.weight",
        "mid.attn_1.k.bias",
        "mid.block_2.norm2.weight",
        "up.3.block.2.nin_shortcut.weight",
        "up.1.attn.2.v.weight",
        "up.3.upsample.conv.bias",
        "norm_out.bias",
        "conv_out.weight",
    ):
        assert k in keys, k
    assert port_shapes(UNET_PRESETS["cifar10"])["down.1.attn.0.q.weight"] == (256, 256, 1, 1)


def test_lsun_checkpoint_given_cifar10_config_says_so():
    lsun = zero_state_dict(port_shapes(UNET_PRESETS["lsun"]))
    assert matching_presets(lsun) == ["lsun"]
    with pytest.raises(ValueError) as err:
        port_to_flax(lsun, UNET_PRESETS["cifar10"], source="model-2388000.ckpt", config_name="cifar10")
    msg = str(err.value)
    assert "model-2388000.ckpt" in msg and "'cifar10'" in msg and "resolution=32" in msg
    assert "missing: down.1.attn.0" in msg and "unexpected: down.2.block.0.nin_shortcut" in msg
    assert "mis-shaped: down.1.block.0.conv1.bias: (128,) (expected (256,))" in msg
    assert "--config lsun" in msg


def test_missing_unexpected_and_misshaped_keys_are_named():
    state = zero_state_dict(port_shapes(CONVERT_UNET))
    del state["mid.attn_1.q.bias"]
    state["mid.attn_1.extra.weight"] = np.zeros(3, np.float32)
    state["conv_out.weight"] = np.zeros((3, 32, 1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        port_to_flax(state, CONVERT_UNET, source="x.ckpt")
    msg = str(err.value)
    assert "1 missing: mid.attn_1.q.bias" in msg
    assert "1 unexpected: mid.attn_1.extra.weight" in msg
    assert "1 mis-shaped: conv_out.weight: (3, 32, 1, 1) (expected (3, 32, 3, 3))" in msg


def test_a_linear_where_the_port_has_a_1x1_conv_is_misshaped():
    state = zero_state_dict(port_shapes(CONVERT_UNET))
    state["mid.attn_1.q.weight"] = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match=r"mid\.attn_1\.q\.weight: \(64, 64\) \(expected \(64, 64, 1, 1\)\)"):
        port_to_flax(state, CONVERT_UNET)
