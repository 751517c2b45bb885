"""Params on disk: safetensors with flattened keys, configs as JSON metadata.

Nothing here unpickles: safetensors holds raw arrays and a string header.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from .atomic import atomic_path
from .config import DiffusionConfig, UNetConfig, config_from_dict, config_to_dict
from .ops import Ops
from .run_layout import run_shapes

FORMAT = "ddpm_jax.params/1"
SEP = "/"


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    """{'down_0': {'block_0': {'kernel': a}}} -> {'down_0/block_0/kernel': a}."""
    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            name = f"{prefix}{SEP}{k}" if prefix else k
            if isinstance(v, dict):
                walk(name, v)
            else:
                flat[name] = v

    walk("", params)
    return flat


def unflatten_params(flat: dict) -> dict:
    params: dict = {}
    for name, value in flat.items():
        node = params
        *parents, leaf = name.split(SEP)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return params


@functools.lru_cache(maxsize=16)
def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Flattened param name -> shape for `config`, computed without allocating (cached).

    The run shapes of the release's UNet as written (`Ops()`: XLA's convolution), shipped for the
    presets or traced once and kept on disk (`run_layout.run_shapes`); a model that runs so needs
    no other trace to load."""
    return {k: tuple(v.shape) for k, v in flatten_params(run_shapes(config, Ops())).items()}


def check_params(flat: dict[str, tuple[int, ...]], config: UNetConfig, source: str = "params"):
    """Raise ValueError naming missing, unexpected and mis-shaped keys.

    `flat` maps flattened names to arrays.
    """
    want = expected_shapes(config)
    got = {k: tuple(np.shape(v)) for k, v in flat.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshaped = [f"{k}: {got[k]} != {want[k]}" for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{source} do not fit the UNet config {config}: " + mismatch_summary(missing, unexpected, misshaped)
        )


def check_finite(flat: dict, source: str = "params"):
    """Raise ValueError naming the arrays that hold NaN or infinite values
    (a model with them samples black or NaN images)."""
    bad = [k for k, v in flat.items() if not np.isfinite(v).all()]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(
            f"{source} holds NaN or infinite values in {len(bad)} array(s): "
            f"{', '.join(bad[:5])}{more}; the weights are damaged (or training diverged)"
        )


def mismatch_summary(missing, unexpected, misshaped, shown: int = 5) -> str:
    """'2 missing: a, b; 1 mis-shaped: c: (1,) != (2,)', the first `shown` of each."""
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts)


def save_weights(path, params: dict, *, diffusion_config: DiffusionConfig, unet_config: UNetConfig):
    """Write params and both configs to one .safetensors file, atomically."""
    path = Path(path)
    flat = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flatten_params(params).items()}
    check_params(flat, unet_config)
    meta = {
        "format": FORMAT,
        "diffusion_config": json.dumps(config_to_dict(diffusion_config)),
        "unet_config": json.dumps(config_to_dict(unet_config)),
    }
    with atomic_path(path) as tmp:
        save_file(flat, tmp, metadata=meta)


def load_weights(path) -> tuple[DiffusionConfig, UNetConfig, dict]:
    """Read a file written by `save_weights`; checks both configs, every key,
    shape and value (NaN/inf are refused)."""
    path = Path(path)
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        flat = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); "
            "re-create it with `ddpm-jax convert` or Diffusion.save_pretrained"
        ) from err
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not ddpm_jax params (metadata format "
            f"{meta.get('format')!r}, expected {FORMAT!r}); a diffusers or PyTorch "
            "checkpoint must go through `ddpm-jax convert` first"
        )
    try:
        dcfg = config_from_dict(DiffusionConfig, json.loads(meta["diffusion_config"]))
        ucfg = config_from_dict(UNetConfig, json.loads(meta["unet_config"]))
    except KeyError as err:
        raise ValueError(f"{path} has no {err} in its metadata; re-create it with `ddpm-jax convert`") from err
    except (ValueError, TypeError) as err:  # bad JSON, or a field out of range
        raise ValueError(f"{path} has an invalid config in its metadata: {err}") from err
    check_params(flat, ucfg, source=str(path))
    check_finite(flat, source=str(path))
    return dcfg, ucfg, unflatten_params(flat)
