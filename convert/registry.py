"""The models known by name: bundled in the package, the port's releases, the Hub's copies.

The released checkpoints are pesser/pytorch_diffusion's conversions of the TF
release (its `diffusion.py` lists their URLs and md5s); the Hub ids are the
same models in diffusers' format under `google/` (see docs/reference.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ddpm_jax
from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig, UNetConfig

# Models that ship inside the package: name -> file under ddpm_jax/models/. digits_4step is digits
# fine-tuned to predict v, then distilled to 4 steps (docs/guide/distillation.md#the-bundled-digits_4step-model).
MODELS_DIR = Path(ddpm_jax.__file__).parent / "models"
BUNDLED: dict[str, str] = {"digits": "digits.safetensors", "digits_4step": "digits_4step.safetensors"}


@dataclass(frozen=True)
class PortCheckpoint:
    """One released checkpoint in the port's format, fetched from `url`."""

    url: str
    filename: str  # relative to the cache directory
    md5: str
    diffusion_config: DiffusionConfig
    unet_config: UNetConfig
    max_bytes: int = 10**9  # a download larger than this is cut off (see download.fetch)


_HEIBOX = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"

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
    # The files are about 143 MB (cifar10) and 455 MB (lsun): bounds with room to spare.
    max_bytes = 300 * 10**6 if preset == "cifar10" else 10**9
    return PortCheckpoint(
        _HEIBOX.format(file_id),
        f"{ema}diffusion_{data}_model/model-{step}.ckpt",
        md5,
        DIFFUSION_PRESETS[preset],
        UNET_PRESETS[preset],
        max_bytes,
    )


# name -> checkpoint; tests register tiny entries served on loopback.
REGISTRY: dict[str, PortCheckpoint] = {row[0]: _released(*row) for row in _RELEASED}

# The same models in diffusers' format on the Hub; any other UNet2DModel repo
# id of this architecture loads too.
HUB_MODELS = tuple(
    f"google/ddpm-{v}{d}"
    for d in ("cifar10-32", "church-256", "bedroom-256", "cat-256", "celebahq-256")
    for v in ("", "ema-")
    if not (d == "cifar10-32" and v)
)


def available_models() -> list[str]:
    return sorted(BUNDLED) + sorted(REGISTRY) + list(HUB_MODELS)
