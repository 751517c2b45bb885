"""Resolve a model name or path to (DiffusionConfig, UNetConfig, params).

Names, tried in this order:
- a bundled model (ships inside the package, `BUNDLED`);
- one of the port's released checkpoints (`REGISTRY`, facts §3), fetched into
  the cache (`ddpm_jax.download.cache_dir()`) and md5-checked;
- a local path: ddpm_jax `.safetensors` params, a port checkpoint
  (`.ckpt`/`.pt`/`.pth`/`.bin`, its preset found from its shapes) or a
  diffusers model folder;
- a Hugging Face Hub id such as `google/ddpm-cifar10-32`, through huggingface_hub
  (its cache, `HF_HUB_OFFLINE`).
Converted params are cached as ddpm_jax safetensors, so each model converts once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig, UNetConfig
from .download import DownloadError, cache_dir, fetch, offline
from .weights import FORMAT, load_weights, save_weights

log = logging.getLogger(__name__)

_MODELS_DIR = Path(__file__).parent / "models"

# Models that ship inside the package: name -> file under ddpm_jax/models/.
BUNDLED: dict[str, str] = {"digits": "digits.safetensors"}


@dataclass(frozen=True)
class PortCheckpoint:
    """One released checkpoint in the port's format, fetched from `url`."""

    url: str
    filename: str  # relative to the cache directory
    md5: str
    diffusion_config: DiffusionConfig
    unet_config: UNetConfig


_HEIBOX = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"

# pesser/pytorch_diffusion's checkpoints of the TF release (facts §3):
# name, heibox file id, training step, md5.
_RELEASED = (
    ("cifar10", "869980b53bf5416c8a28", 790000, "82ed3067fd1002f5cf4c339fb80c4669"),
    ("ema_cifar10", "2e4f01e2d9ee49bab1d5", 790000, "1fa350b952534ae442b1d5235cce5cd3"),
    ("lsun_bedroom", "f179d4f21ebc4d43bbfe", 2388000, "f70280ac0e08b8e696f42cb8e948ff1c"),
    ("ema_lsun_bedroom", "b95206528f384185889b", 2388000, "1921fa46b66a3665e450e42f36c2720f"),
    ("lsun_cat", "fac870bd988348eab88e", 1761000, "bbee0e7c3d7abfb6e2539eaf2fb9987b"),
    ("ema_lsun_cat", "0701aac3aa69457bbe34", 1761000, "646f23f4821f2459b8bafc57fd824558"),
    ("lsun_church", "2711a6f712e34b06b9d8", 4432000, "eb619b8a5ab95ef80f94ce8a5488dae3"),
    ("ema_lsun_church", "44ccb50ef3c6436db52e", 4432000, "fdc68a23938c2397caba4a260bc2445f"),
)


def _released(name, file_id, step, md5) -> PortCheckpoint:
    """The cache path is the port's: [ema_]diffusion_<data>_model/model-<step>.ckpt."""
    data = name.removeprefix("ema_")
    preset = "cifar10" if data == "cifar10" else "lsun"
    ema = "ema_" if name.startswith("ema_") else ""
    return PortCheckpoint(_HEIBOX.format(file_id), f"{ema}diffusion_{data}_model/model-{step}.ckpt", md5,
                          DIFFUSION_PRESETS[preset], UNET_PRESETS[preset])


# name -> checkpoint; tests register tiny entries served on loopback.
REGISTRY: dict[str, PortCheckpoint] = {row[0]: _released(*row) for row in _RELEASED}

# The same models in diffusers' format on the Hub (facts §4); any other
# UNet2DModel repo id of this architecture loads too.
HUB_MODELS = tuple(
    f"google/ddpm-{v}{d}" for d in ("cifar10-32", "church-256", "bedroom-256", "cat-256", "celebahq-256")
    for v in ("", "ema-") if not (d == "cifar10-32" and v)
)


def available_models() -> list[str]:
    return sorted(BUNDLED) + sorted(REGISTRY) + list(HUB_MODELS)


def _converted(name: str, convert):
    """Params cached under `converted/<name>.safetensors`, made by `convert()` once."""
    path = cache_dir() / "converted" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                return load_weights(path)
            except ValueError as err:
                log.warning("converting again: %s", err)
        dcfg, ucfg, params = convert()
        save_weights(path, params, dcfg, ucfg)
        log.info("cached converted params at %s", path)
        return dcfg, ucfg, params


def load_port_checkpoint(path, preset: str | None = None):
    """A port checkpoint file (a torch pickle or .safetensors) -> (dcfg, ucfg, params).

    The configs are the named preset's or, when `preset` is None, those of the
    one preset whose shapes the checkpoint fits.
    """
    from .convert.port import matching_presets, port_to_flax
    from .convert.safe_load import load_state_dict

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


def _load_registered(name: str, entry: PortCheckpoint):
    from .convert.port import port_to_flax
    from .convert.safe_load import load_state_dict

    def convert():
        ckpt = fetch(entry.url, cache_dir() / entry.filename, entry.md5)
        params = port_to_flax(load_state_dict(ckpt), entry.unet_config, source=f"{ckpt} ({name})")
        return entry.diffusion_config, entry.unet_config, params

    return _converted(f"{name}-{entry.md5}", convert)


def _local_key(*paths: Path) -> str:
    """Changes when any of the files is moved, resized or rewritten."""
    ids = [f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in paths]
    return hashlib.md5("\n".join(ids).encode()).hexdigest()


def _hub_folder(repo_id: str) -> Path:
    """The Hub repo's model files in the huggingface_hub cache, fetched unless offline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from .convert.diffusers_format import WEIGHT_FILES

    local_only = offline()
    not_cached = []

    def first(candidates):
        """The first (subfolder, filename) that is in the repo (or, offline, in the cache)."""
        for subfolder, filename in candidates:
            try:
                path = hf_hub_download(repo_id, filename, subfolder=subfolder, local_files_only=local_only)
                return Path(path)
            except LocalEntryNotFoundError:
                not_cached.append(filename)
            except EntryNotFoundError:
                pass
            except OSError as err:  # unknown repo, auth, HTTP errors
                raise DownloadError(f"could not fetch {repo_id} from the Hub ({err})") from err
        if not_cached:
            state = ("downloads are off (HF_HUB_OFFLINE or DDPM_JAX_OFFLINE)" if local_only
                     else "the Hub is unreachable")
            raise DownloadError(
                f"{repo_id} is not in the Hugging Face cache and {state}: run `hf download {repo_id}` "
                "while online (it fills the same cache), or pass a local diffusers model folder"
            )
        return None

    config = first([(None, "config.json"), ("unet", "config.json")])
    if config is None:
        raise ValueError(f"Hub repo {repo_id} has no config.json (nor unet/config.json): not a UNet2DModel")
    sub = None if config.parent.name != "unet" else "unet"
    first([(sub, name) for name in WEIGHT_FILES])
    not_cached.clear()
    try:
        first([(sub, "scheduler_config.json"), ("scheduler", "scheduler_config.json")])
    except DownloadError:
        pass  # optional: load_diffusers falls back to the scheduler's defaults
    return config.parent


def _looks_like_hub_id(key: str) -> bool:
    """owner/name, and not a mistyped path (./x, ~/x, x/model.ckpt)."""
    from .convert.safe_load import TORCH_SUFFIXES

    parts = key.split("/")
    return (len(parts) == 2 and all(parts) and not key.startswith((".", "~"))
            and not key.endswith((".safetensors", *TORCH_SUFFIXES)))


def _is_ddpm_jax_params(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError):
        return False


def convert_checkpoint(src, preset: str | None = None):
    """Convert without caching: a port checkpoint file, a diffusers folder or a Hub id.

    `preset` names the UNet/diffusion presets of a port checkpoint (found by
    shape when None); the other formats carry their own configs.
    """
    from .convert.diffusers_format import load_diffusers
    from .convert.safe_load import TORCH_SUFFIXES

    path = Path(str(src)).expanduser()
    is_port = path.is_file() and (path.suffix in TORCH_SUFFIXES or not _is_ddpm_jax_params(path))
    if is_port:
        return load_port_checkpoint(path, preset)
    if preset is not None:
        raise ValueError(f"a config name applies to the port's checkpoints only; {src} has its own config")
    if path.is_file():
        return load_weights(path)
    if path.is_dir():
        return load_diffusers(path)
    if _looks_like_hub_id(str(src)):
        return load_diffusers(_hub_folder(str(src)))
    raise ValueError(f"{src} is neither a checkpoint file, a diffusers folder nor a Hub id (owner/name)")


def _cache_key(src: str) -> str:
    """Names the conversion of a local folder or Hub snapshot by the files it was made from."""
    from .convert.diffusers_format import model_folder, scheduler_file, weights_file

    path = Path(src).expanduser()
    folder = model_folder(path if path.is_dir() else _hub_folder(src))
    files = [f for f in (folder / "config.json", weights_file(folder), scheduler_file(folder)) if f]
    prefix = "local" if path.is_dir() else f"hub-{src.replace('/', '--')}"
    return f"{prefix}-{_local_key(*files)}"


def load_pretrained(name_or_path):
    """(DiffusionConfig, UNetConfig, params) for a name, path or Hub id (see the module docstring).

    A local .safetensors file must hold ddpm_jax params; convert other
    safetensors checkpoints with `ddpm-jax convert` first.
    """
    from .convert.safe_load import TORCH_SUFFIXES

    key = str(name_or_path)
    if key in BUNDLED:
        return load_weights(_MODELS_DIR / BUNDLED[key])
    if key in REGISTRY:
        return _load_registered(key, REGISTRY[key])
    path = Path(key).expanduser()
    if path.is_file() and path.suffix in TORCH_SUFFIXES:
        return _converted(f"local-{_local_key(path)}", lambda: load_port_checkpoint(path))
    if path.is_file():
        return load_weights(path)
    if path.is_dir() or _looks_like_hub_id(key):
        return _converted(_cache_key(key), lambda: convert_checkpoint(key))
    raise ValueError(
        f"unknown model {key!r}: no such file or folder, not a Hub id (owner/name), "
        f"and not one of {', '.join(available_models())}"
    )
