"""pesser/pytorch_diffusion state_dicts (its `model.py`; docs/reference.md §3) <-> our Flax params.

The port's module names mirror the TensorFlow release's scopes, as ours do, so
the table below is a rename of separators plus the layout of each layer.
`up.{i}` is indexed by resolution level, like our `up_{i}`.
"""

from __future__ import annotations

from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS, UNetConfig
from ddpm_jax.weights import check_params, flatten_params

from .mapping import CONV, CONV1X1, LINEAR, NORM, fits, from_flax, key_table, to_flax
from .safe_load import load_state_dict

_RESNET = (
    ("norm1", NORM),
    ("conv1", CONV),
    ("temb_proj", LINEAR),
    ("norm2", NORM),
    ("conv2", CONV),
    ("nin_shortcut", CONV1X1),
)
_ATTN = (("norm", NORM), ("q", CONV1X1), ("k", CONV1X1), ("v", CONV1X1), ("proj_out", CONV1X1))

# (our module, the port's module, kind)
PORT_TABLE = (
    ("temb/dense_{j}", "temb.dense.{j}", LINEAR),
    ("conv_in", "conv_in", CONV),
    *(
        (f"{side}_{{i}}/block_{{j}}/{n}", f"{side}.{{i}}.block.{{j}}.{n}", kind)
        for side in ("down", "up")
        for n, kind in _RESNET
    ),
    *(
        (f"{side}_{{i}}/attn_{{j}}/{n}", f"{side}.{{i}}.attn.{{j}}.{n}", kind)
        for side in ("down", "up")
        for n, kind in _ATTN
    ),
    ("down_{i}/downsample/conv", "down.{i}.downsample.conv", CONV),
    ("up_{i}/upsample/conv", "up.{i}.upsample.conv", CONV),
    *((f"mid/block_{{j}}/{n}", f"mid.block_{{j}}.{n}", kind) for n, kind in _RESNET),
    *((f"mid/attn_{{j}}/{n}", f"mid.attn_{{j}}.{n}", kind) for n, kind in _ATTN),
    ("norm_out", "norm_out", NORM),
    ("conv_out", "conv_out", CONV),
)


def matching_presets(state_dict: dict) -> list[str]:
    """Names of the UNet presets whose shapes the state_dict fits exactly."""
    return [name for name, cfg in UNET_PRESETS.items() if fits(state_dict, key_table(PORT_TABLE, cfg))]


def port_to_flax(
    state_dict: dict, config: UNetConfig, *, source: str = "checkpoint", config_name: str | None = None
) -> dict:
    """The port's state_dict (name -> numpy array) -> our nested params, strictly.

    On a mismatch the error names the offending keys, the config expected and
    any preset the checkpoint does fit.
    """
    keys = key_table(PORT_TABLE, config)
    label = repr(config_name) if config_name else "given"
    hint = ""
    if not fits(state_dict, keys):
        others = [n for n in matching_presets(state_dict) if n != config_name]
        if others:
            hint = f"; it fits the {others[0]!r} preset: pass --config {others[0]}"
    return to_flax(state_dict, keys, config, source=source, config_label=label, hint=hint)


def flax_to_port(params: dict, config: UNetConfig) -> dict:
    """Our params -> the port's state_dict of numpy float32 arrays (OIHW convs)."""
    flat = flatten_params(params)
    check_params(flat, config)
    return from_flax(flat, key_table(PORT_TABLE, config))


def load_port(path, preset: str | None = None):
    """A port checkpoint file (a torch pickle or .safetensors) -> (dcfg, ucfg, params).

    The configs are the named preset's or, when `preset` is None, those of the
    one preset whose shapes the checkpoint fits.
    """
    state = load_state_dict(path)
    if preset is None:
        found = matching_presets(state)
        if not found:
            raise ValueError(
                f"{path} fits none of the UNet presets ({', '.join(UNET_PRESETS)}); "
                "pass --config NAME to see which keys differ"
            )
        preset = found[0]
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown config {preset!r}; valid: {', '.join(UNET_PRESETS)}")
    ucfg = UNET_PRESETS[preset]
    return DIFFUSION_PRESETS[preset], ucfg, port_to_flax(state, ucfg, source=str(path), config_name=preset)
