"""Resolve a model name or path to (DiffusionConfig, UNetConfig, params)."""

from __future__ import annotations

from pathlib import Path

from .weights import load_weights

_MODELS_DIR = Path(__file__).parent / "models"

# Models that ship inside the package: name -> file under ddpm_jax/models/.
BUNDLED: dict[str, str] = {}


def available_models() -> list[str]:
    return sorted(BUNDLED)


def load_pretrained(name_or_path):
    """A bundled name or a path to a ddpm_jax .safetensors file."""
    key = str(name_or_path)
    if key in BUNDLED:
        return load_weights(_MODELS_DIR / BUNDLED[key])
    path = Path(key).expanduser()
    if path.is_file():
        return load_weights(path)
    raise ValueError(
        f"unknown model {key!r}: not a file and not one of "
        f"{', '.join(available_models()) or '(no models registered)'}"
    )
