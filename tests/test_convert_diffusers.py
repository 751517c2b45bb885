"""diffusers-format checkpoints: config.json and scheduler_config.json mapping, key
naming (old and new attention), folders, Hub ids from the huggingface_hub cache."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ddpm_jax import Diffusion
from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig
from ddpm_jax.convert.diffusers_format import (
    diffusers_to_flax,
    diffusion_config_from_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from ddpm_jax.convert.resolve import load_pretrained
from ddpm_jax.download import DownloadError
from ddpm_jax.weights import flatten_params

from .helpers import CONVERT_UNET, numpy_state_dict, random_diffusers_unet, save_diffusers_folder

torch = pytest.importorskip("torch")

# google/ddpm-cat-256's config.json as published on the Hub.
CAT_256 = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}
CAT_256_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_small",
}


@pytest.fixture(scope="module")
def tiny_torch():
    return random_diffusers_unet(CONVERT_UNET, seed=5)


def test_hub_cat_config_is_the_lsun_preset():
    assert unet_config_from_diffusers(CAT_256) == UNET_PRESETS["lsun"]
    assert diffusion_config_from_diffusers(CAT_256_SCHEDULER) == DIFFUSION_PRESETS["lsun"]


def test_cifar10_layout_maps_to_the_cifar10_preset():
    cfg = dict(
        CAT_256,
        sample_size=32,
        block_out_channels=[128, 256, 256, 256],
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    )
    # config.json carries no dropout (diffusers' default 0.0); it only matters for training.
    assert unet_config_from_diffusers(cfg) == dataclasses.replace(UNET_PRESETS["cifar10"], dropout=0.0)
    sched = dict(CAT_256_SCHEDULER, variance_type="fixed_large")
    assert diffusion_config_from_diffusers(sched) == DIFFUSION_PRESETS["cifar10"]


# digits (num_res_blocks=0) has no diffusers form: tests/test_validation.py checks it is refused.
@pytest.mark.parametrize("config", [CONVERT_UNET, UNET_PRESETS["cifar10"], UNET_PRESETS["lsun"]])
def test_unet_config_round_trip(config):
    assert unet_config_from_diffusers(json.loads(json.dumps(unet_config_to_diffusers(config)))) == config


@pytest.mark.parametrize(
    "change, named",
    [
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"] + ["DownBlock2D"] * 4}, "CrossAttnDownBlock2D"),
        ({"up_block_types": ["UpBlock2D"] * 6}, "up mirroring down"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos=True"),
        ({"freq_shift": 0}, "freq_shift=0"),
        ({"norm_eps": 1e-5}, "norm_eps=1e-05"),
        ({"downsample_padding": 1}, "downsample_padding=1"),
        ({"attention_head_dim": 8}, "attention_head_dim=8"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift='scale_shift'"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"act_fn": "mish"}, "act_fn='mish'"),
        ({"block_out_channels": [128, 192, 256, 256, 512, 512]}, "block_out_channels"),
        ({"sample_size": [256, 128]}, "sample_size"),
        ({"_class_name": "UNet2DConditionModel"}, "not a UNet2DModel"),
        ({"cross_attention_dim": 768}, "unsupported UNet2DModel options ['cross_attention_dim']"),
    ],
)
def test_unsupported_unet_options_are_rejected_by_name(change, named):
    with pytest.raises(ValueError) as err:
        unet_config_from_diffusers({**CAT_256, **change}, "cat/config.json")
    assert named in str(err.value) and "cat/config.json" in str(err.value)


def test_absent_keys_take_diffusers_defaults_and_are_rejected():
    """A config.json without freq_shift means diffusers' default 0, not the release's 1."""
    cfg = {k: v for k, v in CAT_256.items() if k not in ("freq_shift", "flip_sin_to_cos")}
    with pytest.raises(ValueError, match="freq_shift=0 .need 1.; flip_sin_to_cos=True"):
        unet_config_from_diffusers(cfg)


def test_scheduler_mapping():
    assert diffusion_config_from_diffusers({}) == DiffusionConfig(model_var_type="fixedsmall")
    got = diffusion_config_from_diffusers(
        {"beta_schedule": "scaled_linear", "num_train_timesteps": 10, "variance_type": "fixed_large", "beta_end": 0.03}
    )
    assert got == DiffusionConfig("quad", 1e-4, 0.03, 10, "fixedlarge")
    for bad, named in (
        ({"variance_type": "learned_range"}, "variance_type='learned_range'"),
        ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
        ({"prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"_class_name": "DDIMScheduler"}, "DDIMScheduler"),
    ):
        with pytest.raises(ValueError, match=named):
            diffusion_config_from_diffusers(bad)


def test_old_and_new_attention_names_give_the_same_params(tiny_torch):
    state = numpy_state_dict(tiny_torch)
    old = {}
    for k, v in state.items():
        for new, was in (
            (".to_q.", ".query."),
            (".to_k.", ".key."),
            (".to_v.", ".value."),
            (".to_out.0.", ".proj_attn."),
        ):
            k = k.replace(new, was)
        old[k] = v
    assert any(".proj_attn." in k for k in old) and not any(".to_out.0." in k for k in old)
    a, b = flatten_params(diffusers_to_flax(state, CONVERT_UNET)), flatten_params(diffusers_to_flax(old, CONVERT_UNET))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_strict_on_unexpected_and_missing_keys(tiny_torch):
    state = numpy_state_dict(tiny_torch)
    state["time_embedding.cond_proj.weight"] = np.zeros((32, 4), np.float32)
    del state["mid_block.attentions.0.to_out.0.bias"]
    with pytest.raises(
        ValueError,
        match="1 missing: mid_block.attentions.0.to_out.0.bias; 1 unexpected: time_embedding.cond_proj.weight",
    ):
        diffusers_to_flax(state, CONVERT_UNET)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_folder_loads_through_from_pretrained(tiny_torch, tmp_path, monkeypatch, safe):
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    folder = save_diffusers_folder(tiny_torch, tmp_path / "model", safe=safe, variance="fixed_large")
    weights = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "scheduler_config.json", weights])
    model = Diffusion.from_pretrained(folder)
    assert model.unet_config == CONVERT_UNET and model.diffusion_config == DiffusionConfig(model_var_type="fixedlarge")
    want = flatten_params(diffusers_to_flax(numpy_state_dict(tiny_torch), CONVERT_UNET))
    got = flatten_params(model.params)
    assert all(np.array_equal(np.asarray(got[k]), want[k]) for k in want)
    assert len(list((tmp_path / "cache" / "converted").glob("local-*.safetensors"))) == 1


def test_pipeline_layout_with_unet_and_scheduler_subfolders(tiny_torch, tmp_path, monkeypatch):
    from diffusers import DDPMScheduler

    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    tiny_torch.save_pretrained(tmp_path / "pipe" / "unet")
    DDPMScheduler(num_train_timesteps=50, variance_type="fixed_large").save_pretrained(tmp_path / "pipe" / "scheduler")
    dcfg, ucfg, _ = load_pretrained(tmp_path / "pipe")
    assert ucfg == CONVERT_UNET and dcfg.num_diffusion_timesteps == 50 and dcfg.model_var_type == "fixedlarge"


def fake_hub_cache(root, repo_id, files: dict):
    """Lay files out as huggingface_hub's cache does: models--o--n/snapshots/<commit>/, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for name, src in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(src.read_bytes())
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_hub_id_from_the_huggingface_cache_offline(tiny_torch, tmp_path, monkeypatch):
    import huggingface_hub.constants

    folder = save_diffusers_folder(tiny_torch, tmp_path / "model", num_train_timesteps=20)
    fake_hub_cache(tmp_path / "hub", "google/ddpm-tiny", {p.name: p for p in folder.iterdir()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    model = Diffusion.from_pretrained("google/ddpm-tiny")
    assert model.unet_config == CONVERT_UNET and model.num_timesteps == 20
    assert len(list((tmp_path / "cache" / "converted").glob("hub-google--ddpm-tiny-*.safetensors"))) == 1


def test_hub_id_not_cached_offline_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        DownloadError,
        match=r"google/ddpm-cifar10-32 is not in the Hugging Face cache and "
        r"downloads are off .*hf download google/ddpm-cifar10-32",
    ):
        Diffusion.from_pretrained("google/ddpm-cifar10-32")
