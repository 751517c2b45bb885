"""diffusers' UNet2DModel checkpoints (docs/reference.md §4) -> our configs and Flax params.

A diffusers model folder holds `config.json`, `diffusion_pytorch_model.safetensors`
or `.bin` and, beside it or in `../scheduler/`, `scheduler_config.json`. Only
the release's architecture is accepted: any option that would change the
network or the process (another block type, embedding, norm, beta schedule)
is rejected by name rather than silently dropped. The scheduler's
`prediction_type` maps to ours (`epsilon`, `v_prediction`, `sample`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ddpm_jax.config import DiffusionConfig, UNetConfig

from .mapping import CONV, CONV1X1, LINEAR, NORM, key_table, to_flax
from .safe_load import load_state_dict

log = logging.getLogger(__name__)

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

_RESNET = (
    ("norm1", "norm1", NORM),
    ("conv1", "conv1", CONV),
    ("temb_proj", "time_emb_proj", LINEAR),
    ("norm2", "norm2", NORM),
    ("conv2", "conv2", CONV),
    ("nin_shortcut", "conv_shortcut", CONV1X1),
)
_ATTN = (
    ("norm", "group_norm", NORM),
    ("q", "to_q", LINEAR),
    ("k", "to_k", LINEAR),
    ("v", "to_v", LINEAR),
    ("proj_out", "to_out.0", LINEAR),
)

# (our module, diffusers' module, kind). Up blocks run deepest level first:
# our up_{i} is diffusers' up_blocks.{u}, u = levels - 1 - i.
DIFFUSERS_TABLE = (
    ("temb/dense_0", "time_embedding.linear_1", LINEAR),
    ("temb/dense_1", "time_embedding.linear_2", LINEAR),
    ("conv_in", "conv_in", CONV),
    *((f"down_{{i}}/block_{{j}}/{a}", f"down_blocks.{{i}}.resnets.{{j}}.{b}", k) for a, b, k in _RESNET),
    *((f"down_{{i}}/attn_{{j}}/{a}", f"down_blocks.{{i}}.attentions.{{j}}.{b}", k) for a, b, k in _ATTN),
    ("down_{i}/downsample/conv", "down_blocks.{i}.downsamplers.0.conv", CONV),
    *((f"mid/block_1/{a}", f"mid_block.resnets.0.{b}", k) for a, b, k in _RESNET),
    *((f"mid/attn_1/{a}", f"mid_block.attentions.0.{b}", k) for a, b, k in _ATTN),
    *((f"mid/block_2/{a}", f"mid_block.resnets.1.{b}", k) for a, b, k in _RESNET),
    *((f"up_{{i}}/block_{{j}}/{a}", f"up_blocks.{{u}}.resnets.{{j}}.{b}", k) for a, b, k in _RESNET),
    *((f"up_{{i}}/attn_{{j}}/{a}", f"up_blocks.{{u}}.attentions.{{j}}.{b}", k) for a, b, k in _ATTN),
    ("up_{i}/upsample/conv", "up_blocks.{u}.upsamplers.0.conv", CONV),
    ("norm_out", "conv_norm_out", NORM),
    ("conv_out", "conv_out", CONV),
)

# Checkpoints written before diffusers 0.14 name the attention layers differently.
_OLD_ATTN = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_NEW_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_old_attention(state_dict: dict) -> dict:
    """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0 (a key already new stays put)."""
    out = {}
    for key, value in state_dict.items():
        m = _OLD_ATTN.match(key)
        new = f"{m[1]}.{_NEW_ATTN[m[2]]}.{m[3]}" if m else key
        out[key if new in state_dict else new] = value
    return out


# UNet2DModel options that must hold these values (its defaults apply when a key is absent).
_REQUIRED = {
    "center_input_sample": (False, False),
    "time_embedding_type": ("positional", "positional"),
    "freq_shift": (0, 1),
    "flip_sin_to_cos": (True, False),
    "mid_block_type": ("UNetMidBlock2D", "UNetMidBlock2D"),
    "mid_block_scale_factor": (1, 1),
    "downsample_padding": (1, 0),
    "downsample_type": ("conv", "conv"),
    "upsample_type": ("conv", "conv"),
    "norm_num_groups": (32, 32),
    "norm_eps": (1e-5, 1e-6),
    "resnet_time_scale_shift": ("default", "default"),
    "add_attention": (True, True),
    "class_embed_type": (None, None),
    "num_class_embeds": (None, None),
}  # key: (diffusers' default, the value the release's UNet needs)
_OTHER_KEYS = {
    "sample_size",
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "attn_norm_num_groups",
    "time_embedding_dim",
    "num_train_timesteps",
}


def _positive_ints(value) -> list[int] | None:
    """A non-empty JSON list of positive ints, or None."""
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return list(value)
    return None


def _strings(value) -> list[str] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _as_object(cfg, source: str) -> dict:
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: expected a JSON object of settings, got {type(cfg).__name__} {cfg!r:.80}")
    return cfg


def _built(cls, source: str, **fields):
    """`cls(**fields)`, its range errors prefixed with the file they came from."""
    try:
        return cls(**fields)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from err


def unet_config_from_diffusers(cfg: dict, source: str = "config.json") -> UNetConfig:
    """A UNet2DModel config.json (as a dict) -> our UNetConfig, or ValueError naming what differs.

    The values go through UNetConfig's checks (types and ranges) before
    anything is allocated.
    """
    cfg = _as_object(cfg, source)
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{source}: a {cfg['_class_name']!r}, not a UNet2DModel; only UNet2DModel converts")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _REQUIRED and k not in _OTHER_KEYS)
    if unknown:
        raise ValueError(f"{source}: unsupported UNet2DModel options {unknown}")
    bad = [
        f"{k}={cfg.get(k, default)!r} (need {need!r})"
        for k, (default, need) in _REQUIRED.items()
        if cfg.get(k, default) != need
    ]
    if cfg.get("act_fn", "silu") not in ("silu", "swish"):
        bad.append(f"act_fn={cfg['act_fn']!r} (need 'silu')")
    if cfg.get("attn_norm_num_groups") not in (None, 32):
        bad.append(f"attn_norm_num_groups={cfg['attn_norm_num_groups']!r} (need None or 32)")
    # diffusers' blocks with no resnet keep their input's channels, which its
    # downsampler and norms do not expect: such a UNet2DModel cannot run.
    layers = cfg.get("layers_per_block", 2)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        bad.append(f"layers_per_block={layers!r} (need an int >= 1)")
    boc = _positive_ints(cfg.get("block_out_channels", (224, 448, 672, 896)))
    down = _strings(cfg.get("down_block_types", ("DownBlock2D",) + ("AttnDownBlock2D",) * 3))
    up = _strings(cfg.get("up_block_types", ("AttnUpBlock2D",) * 3 + ("UpBlock2D",)))
    if boc is None:
        bad.append(f"block_out_channels={cfg['block_out_channels']!r} (need a non-empty list of positive ints)")
    if down is None or up is None:
        bad.append(
            f"down_block_types={cfg.get('down_block_types')!r}, up_block_types={cfg.get('up_block_types')!r} "
            "(need lists of block type names)"
        )
    if boc is None or down is None or up is None:  # the checks below need all three
        raise ValueError(f"{source}: not the DDPM release's UNet; unsupported: " + "; ".join(bad))
    ch = boc[0]
    if any(c % ch for c in boc):
        bad.append(f"block_out_channels={boc} (each must be a multiple of the first)")
    if cfg.get("time_embedding_dim") not in (None, 4 * ch):
        bad.append(f"time_embedding_dim={cfg['time_embedding_dim']!r} (need None or {4 * ch})")
    others = sorted(
        {t for t in down if t not in ("DownBlock2D", "AttnDownBlock2D")}
        | {t for t in up if t not in ("UpBlock2D", "AttnUpBlock2D")}
    )
    if others:
        bad.append(f"block types {others} (need DownBlock2D/AttnDownBlock2D, UpBlock2D/AttnUpBlock2D)")
    attn_levels = [i for i, t in enumerate(down) if t == "AttnDownBlock2D"]
    if len(down) != len(boc) or [t == "AttnUpBlock2D" for t in reversed(up)] != [t == "AttnDownBlock2D" for t in down]:
        bad.append(f"down_block_types={down}, up_block_types={up} (need one per level, up mirroring down)")
    head = cfg.get("attention_head_dim", 8)
    if head is not None and any(head != boc[i] for i in [*attn_levels, len(boc) - 1]):
        bad.append(f"attention_head_dim={head!r} (need None: one head over all channels)")
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0] if size and all(v == size[0] for v in size) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        bad.append(f"sample_size={cfg.get('sample_size')!r} (need one positive int, a square image)")
    if bad:
        raise ValueError(f"{source}: not the DDPM release's UNet; unsupported: " + "; ".join(bad))
    return _built(
        UNetConfig,
        source,
        resolution=size,
        in_channels=cfg.get("in_channels", 3),
        out_ch=cfg.get("out_channels", 3),
        ch=ch,
        ch_mult=tuple(c // ch for c in boc),
        num_res_blocks=layers,
        attn_resolutions=tuple(size // 2**i for i in attn_levels),
        dropout=cfg.get("dropout", 0.0),
    )


def unet_config_to_diffusers(config: UNetConfig) -> dict:
    """Our UNetConfig -> UNet2DModel keyword arguments (the inverse of the above).

    diffusers cannot express num_res_blocks=0 (see `unet_config_from_diffusers`).
    """
    if config.num_res_blocks < 1:
        raise ValueError(
            f"diffusers' UNet2DModel needs num_res_blocks >= 1; this config has "
            f"{config.num_res_blocks} (strided convs only going down)"
        )
    attn = [config.resolution // 2**i in config.attn_resolutions for i in range(len(config.ch_mult))]
    return dict(
        sample_size=config.resolution,
        in_channels=config.in_channels,
        out_channels=config.out_ch,
        block_out_channels=[config.ch * m for m in config.ch_mult],
        layers_per_block=config.num_res_blocks,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        dropout=config.dropout,
        act_fn="silu",
        attention_head_dim=None,
        **{k: need for k, (_, need) in _REQUIRED.items()},
    )


_VARIANCE = {"fixed_large": "fixedlarge", "fixed_small": "fixedsmall"}
_BETAS = {"linear": "linear", "scaled_linear": "quad"}  # scaled_linear is linspace(sqrt) ** 2
_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def diffusion_config_from_diffusers(cfg: dict, source: str = "scheduler_config.json") -> DiffusionConfig:
    """A DDPMScheduler config (as a dict) -> our DiffusionConfig (its checks
    included), or ValueError."""
    cfg = _as_object(cfg, source)
    bad = []
    if cfg.get("_class_name", "DDPMScheduler") != "DDPMScheduler":
        bad.append(f"_class_name={cfg['_class_name']!r} (need 'DDPMScheduler')")
    schedule = cfg.get("beta_schedule", "linear")
    variance = cfg.get("variance_type", "fixed_small")
    prediction = cfg.get("prediction_type", "epsilon")
    for key, value, valid in (
        ("beta_schedule", schedule, _BETAS),
        ("variance_type", variance, _VARIANCE),
        ("prediction_type", prediction, _PREDICTION),
    ):
        if not isinstance(value, str) or value not in valid:
            bad.append(f"{key}={value!r} (need one of {sorted(valid)})")
    for key, default, need in (
        ("trained_betas", None, None),
        ("thresholding", False, False),
        ("rescale_betas_zero_snr", False, False),
        ("clip_sample_range", 1.0, 1.0),
    ):
        if cfg.get(key, default) != need:
            bad.append(f"{key}={cfg[key]!r} (need {need!r})")
    if bad:
        raise ValueError(f"{source}: unsupported scheduler settings: " + "; ".join(bad))
    if not cfg.get("clip_sample", True):
        log.warning("%s has clip_sample=false: sample with clip=False to match it", source)
    return _built(
        DiffusionConfig,
        source,
        beta_schedule=_BETAS[schedule],
        beta_start=cfg.get("beta_start", 1e-4),
        beta_end=cfg.get("beta_end", 0.02),
        num_diffusion_timesteps=cfg.get("num_train_timesteps", 1000),
        model_var_type=_VARIANCE[variance],
        prediction_type=_PREDICTION[prediction],
    )


def diffusion_config_to_diffusers(config: DiffusionConfig) -> dict:
    """Our DiffusionConfig -> DDPMScheduler keyword arguments (the inverse of the above), for
    `scheduler_config.json`. Only the linear and quad schedules have a diffusers name."""
    betas = {ours: theirs for theirs, ours in _BETAS.items()}
    if config.beta_schedule not in betas:
        raise ValueError(
            f"beta schedule {config.beta_schedule!r} has no DDPMScheduler form; diffusers names {sorted(betas)}"
        )
    return dict(
        num_train_timesteps=config.num_diffusion_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=betas[config.beta_schedule],
        variance_type={ours: theirs for theirs, ours in _VARIANCE.items()}[config.model_var_type],
        prediction_type={ours: theirs for theirs, ours in _PREDICTION.items()}[config.prediction_type],
        clip_sample=True,
    )


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes


def _read_json(path: Path):
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES}")
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({err})") from err


def model_folder(folder) -> Path:
    """The folder holding config.json: `folder` itself or its `unet/` (a pipeline)."""
    folder = Path(folder)
    for candidate in (folder, folder / "unet"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"{folder} is not a diffusers model folder: no config.json in it or in its unet/")


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} has config.json but no weights: expected {' or '.join(WEIGHT_FILES)}")


def scheduler_file(folder: Path) -> Path | None:
    for path in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if path.is_file():
            return path
    return None


def load_diffusers(folder) -> tuple[DiffusionConfig, UNetConfig, dict]:
    """A diffusers UNet2DModel folder -> (DiffusionConfig, UNetConfig, params), strictly checked."""
    folder = model_folder(folder)
    ucfg = unet_config_from_diffusers(_read_json(folder / "config.json"), str(folder / "config.json"))
    sched = scheduler_file(folder)
    if sched is None:
        log.warning("%s has no scheduler_config.json: using DDPMScheduler's defaults", folder)
        dcfg = diffusion_config_from_diffusers({})
    else:
        dcfg = diffusion_config_from_diffusers(_read_json(sched), str(sched))
    weights = weights_file(folder)
    params = diffusers_to_flax(load_state_dict(weights), ucfg, source=str(weights))
    return dcfg, ucfg, params


def diffusers_to_flax(state_dict: dict, config: UNetConfig, *, source: str = "state_dict") -> dict:
    """A UNet2DModel state_dict (either attention naming) -> our nested params."""
    keys = key_table(DIFFUSERS_TABLE, config)
    return to_flax(rename_old_attention(state_dict), keys, config, source=source, config_label="from its config.json")
