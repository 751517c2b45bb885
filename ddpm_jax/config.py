"""Frozen configurations of the diffusion process and of the UNet, with presets.

The presets are the released models' settings (docs/reference.md §1-§2); the same objects
drive the UNet, the converter's shape checks and the JSON stored beside params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_VAR_TYPES = ("fixedlarge", "fixedsmall")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process: a beta schedule and the reverse variance choice."""

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000
    model_var_type: str = "fixedlarge"

    def __post_init__(self):
        if self.model_var_type not in MODEL_VAR_TYPES:
            raise ValueError(
                f"unknown model_var_type {self.model_var_type!r}; "
                f"valid: {', '.join(MODEL_VAR_TYPES)}"
            )
        if int(self.num_diffusion_timesteps) < 2:
            raise ValueError(
                f"num_diffusion_timesteps must be >= 2, got {self.num_diffusion_timesteps}"
            )


@dataclass(frozen=True)
class UNetConfig:
    """The release's UNet (`diffusion_tf/models/unet.py`). Channels must be multiples of 32 (GroupNorm)."""

    resolution: int = 32
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1

    def __post_init__(self):
        # JSON round trips give lists; keep the dataclass hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(
            self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions)
        )
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32]
        if bad:
            raise ValueError(
                f"every level's channels (ch * ch_mult) must be a multiple of 32 for "
                f"GroupNorm(32); ch={self.ch}, ch_mult={self.ch_mult} gives {bad}"
            )
        levels = len(self.ch_mult)
        if self.resolution % 2 ** (levels - 1):
            raise ValueError(
                f"resolution {self.resolution} must be divisible by 2**{levels - 1} "
                f"for {levels} levels (ch_mult={self.ch_mult})"
            )


DIFFUSION_PRESETS = {
    "cifar10": DiffusionConfig(model_var_type="fixedlarge"),
    "lsun": DiffusionConfig(model_var_type="fixedsmall"),
    "digits": DiffusionConfig(model_var_type="fixedlarge"),
}

UNET_PRESETS = {
    "cifar10": UNetConfig(),
    "lsun": UNetConfig(
        resolution=256, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), dropout=0.0
    ),
    # The bundled model: scikit-learn's 8x8 digits upsampled to 16x16, grayscale.
    # No res blocks going down (strided convs only) keeps a 1000-step chain
    # cheap on a CPU; each level going up still has one.
    "digits": UNetConfig(
        resolution=16, in_channels=1, out_ch=1, ch=32, ch_mult=(1, 1, 2),
        num_res_blocks=0, attn_resolutions=(4,), dropout=0.0,
    ),
}


def config_to_dict(config) -> dict:
    """A config as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict):
    """Build `cls` from a dict, rejecting unknown fields with their names."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} fields {unknown}; valid: {sorted(names)}"
        )
    return cls(**data)
