"""What a model name means, decided in one place for loading and for `ddpm-jax convert`.

`resolve(name)` looks at a name once and returns a `Source`; names are tried
in this order:

| kind        | what                                                             |
|-------------|------------------------------------------------------------------|
| `bundled`   | a model shipped inside the package (`registry.BUNDLED`)          |
| `released`  | one of the port's checkpoints (`registry.REGISTRY`), fetched into the cache, md5-checked |
| `params`    | a ddpm_jax `.safetensors` file (`save_pretrained`, `ddpm-jax convert`) |
| `port`      | a local port checkpoint: `.ckpt/.pt/.pth/.bin`, or `.safetensors` with the port's keys |
| `diffusers` | a local diffusers model folder, or a Hub id's files in the huggingface_hub cache |

`load(source)` returns (DiffusionConfig, UNetConfig, params); what needed a
conversion is cached as ddpm_jax params (`<cache>/converted/`), so each model
converts once. `convert(source, preset)` converts without the cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from safetensors import SafetensorError, safe_open

from ddpm_jax.download import cache_dir, fetch
from ddpm_jax.weights import FORMAT, load_weights, save_weights

from .diffusers_format import load_diffusers, model_folder, scheduler_file, weights_file
from .hub import hub_folder, looks_like_hub_id
from .port import load_port, port_to_flax
from .registry import BUNDLED, MODELS_DIR, REGISTRY, PortCheckpoint, available_models
from .safe_load import TORCH_SUFFIXES, load_state_dict

log = logging.getLogger(__name__)

KINDS = ("bundled", "released", "params", "port", "diffusers")


@dataclass(frozen=True)
class Source:
    """A resolved model name: its kind, the local file or folder, and for a
    released name its registry entry, for a Hub id the repo id."""

    kind: str
    name: str
    path: Path | None = None
    entry: PortCheckpoint | None = None
    repo_id: str | None = None


def _safetensors_kind(path: Path) -> str:
    """'params' for ddpm_jax params, 'port' for one holding the port's keys; a
    diffusers weights file (its config sits in the folder) or any other file is refused."""
    try:
        with safe_open(path, framework="numpy") as f:
            if (f.metadata() or {}).get("format") == FORMAT:
                return "params"
            keys = set(f.keys())
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); re-create it with "
            "`ddpm-jax convert` or Diffusion.save_pretrained"
        ) from err
    if "time_embedding.linear_1.weight" in keys:
        raise ValueError(
            f"{path} holds diffusers' UNet2DModel weights: pass the folder holding it and its config.json instead"
        )
    if "temb.dense.0.weight" not in keys:
        raise ValueError(
            f"{path} is a safetensors file but not ddpm_jax params (no format {FORMAT!r} metadata) and not "
            "the port's UNet state_dict (no 'temb.dense.0.weight'); convert a PyTorch or diffusers "
            "checkpoint with `ddpm-jax convert` first"
        )
    return "port"


def resolve(name) -> Source:
    """The `Source` a name or path stands for (see the module docstring), or ValueError."""
    key = str(name)
    if key in BUNDLED:
        return Source("bundled", key, MODELS_DIR / BUNDLED[key])
    if key in REGISTRY:
        return Source("released", key, entry=REGISTRY[key])
    path = Path(key).expanduser()
    if path.is_dir():
        return Source("diffusers", key, model_folder(path))
    if path.is_file():
        if path.suffix == ".safetensors":
            return Source(_safetensors_kind(path), key, path)
        if path.suffix in TORCH_SUFFIXES:
            return Source("port", key, path)
        raise ValueError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or one of "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    if looks_like_hub_id(key):
        return Source("diffusers", key, hub_folder(key), repo_id=key)
    raise ValueError(
        f"unknown model {key!r}: no such file or folder, not a Hub id (owner/name), "
        f"and not one of {', '.join(available_models())}"
    )


def source_files(source: Source) -> list[Path]:
    """The files a source is read from (for a released name, its place in the cache)."""
    if source.kind == "released":
        return [cache_dir() / source.entry.filename]
    if source.kind == "diffusers":
        folder = source.path
        return [f for f in (folder / "config.json", weights_file(folder), scheduler_file(folder)) if f]
    return [source.path]


def _fetch_released(source: Source) -> Path:
    entry = source.entry
    return fetch(entry.url, cache_dir() / entry.filename, entry.md5, max_bytes=entry.max_bytes)


def convert(source: Source, preset: str | None = None):
    """(DiffusionConfig, UNetConfig, params) of `source`, converted now, not cached.

    `preset` names the UNet/diffusion presets of a port checkpoint (found by
    shape when None); the other kinds carry their own configs.
    """
    if preset is not None and source.kind != "port":
        raise ValueError(f"a config name applies to the port's checkpoints only; {source.name} has its own config")
    if source.kind in ("bundled", "params"):
        return load_weights(source.path)
    if source.kind == "released":
        ckpt = _fetch_released(source)
        params = port_to_flax(load_state_dict(ckpt), source.entry.unet_config, source=f"{ckpt} ({source.name})")
        return source.entry.diffusion_config, source.entry.unet_config, params
    if source.kind == "port":
        return load_port(source.path, preset)
    return load_diffusers(source.path)


def _file_key(*paths: Path) -> str:
    """Changes when any of the files is moved, resized or rewritten."""
    ids = [f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in paths]
    return hashlib.md5("\n".join(ids).encode()).hexdigest()


def _cache_name(source: Source) -> str:
    """Names a conversion by what it was made from."""
    if source.kind == "released":
        return f"{source.name}-{source.entry.md5}"
    if source.kind == "port":
        return f"local-{_file_key(source.path)}"
    prefix = f"hub-{source.repo_id.replace('/', '--')}" if source.repo_id else "local"
    return f"{prefix}-{_file_key(*source_files(source))}"


def _cached(name: str, make: Callable):
    """Params cached under `<cache>/converted/<name>.safetensors`, made by `make()` once.

    The cache only saves time: when it cannot be written (read-only, full),
    the conversion happens in memory, with a warning.
    """
    path = cache_dir() / "converted" / f"{name}.safetensors"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as err:
        log.warning("converting in memory: the conversion cache %s is not writable (%s)", path.parent, err)
        return make()
    try:
        if path.is_file():
            try:
                return load_weights(path)
            except ValueError as err:
                log.warning("converting again: %s", err)
        dcfg, ucfg, params = make()
        try:
            save_weights(path, params, diffusion_config=dcfg, unet_config=ucfg)
            log.info("cached converted params at %s", path)
        except OSError as err:
            log.warning("could not cache the converted params at %s (%s); they are used from memory", path, err)
        return dcfg, ucfg, params
    finally:
        lock.release()


def load(source: Source):
    """(DiffusionConfig, UNetConfig, params) of `source`, converting once through the cache."""
    if source.kind in ("bundled", "params"):
        return convert(source)
    return _cached(_cache_name(source), lambda: convert(source))


def load_pretrained(name_or_path):
    """(DiffusionConfig, UNetConfig, params) for a name, path or Hub id: `load(resolve(name))`."""
    return load(resolve(name_or_path))
