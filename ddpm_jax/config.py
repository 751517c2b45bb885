"""Frozen configurations of the diffusion process and of the UNet, with presets.

The presets are the released models' settings (the paper's Appendix B and the
TF release's `diffusion_utils_2.py`/`unet.py`; docs/reference.md §1-§2); the same objects drive the
UNet, the converter's shape checks and the JSON stored beside params.

Every field is type- and range-checked when a config is built, so a config
read from a file (safetensors metadata, diffusers' `config.json`) fails with
the field, the value and the valid range before anything is allocated. The
upper bounds (`LIMITS`) are far above any released model; they only keep a
hostile or mistyped file from asking for gigabytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .checks import check_choice, check_float, check_int
from .schedule import SCHEDULES

MODEL_VAR_TYPES = ("fixedlarge", "fixedsmall")
# What the UNet's output means: eps (the release), v = alpha_t eps - sigma_t x_0 or
# x_0 itself (Salimans & Ho 2022, Sec. 4); `coefficients` turns it into both.
PREDICTION_TYPES = ("eps", "v", "x0")

# Bounds of the integer fields (the released models: T 1000, resolution 32/256,
# ch 128, ch_mult up to 4 over 6 levels, 2 res blocks).
LIMITS = {
    "num_diffusion_timesteps": (2, 100_000),
    "resolution": (1, 4096),
    "channels": (1, 64),  # in_channels, out_ch: image channels
    "ch": (32, 4096),
    "levels": (1, 8),  # len(ch_mult)
    "ch_mult": (1, 64),  # each entry; ch * ch_mult is bounded by "ch" too
    "num_res_blocks": (0, 16),
}


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process: a beta schedule, the reverse variance choice and
    what the model predicts (`PREDICTION_TYPES`; "eps" for every released model).

    Every beta lies between beta_start and beta_end (or is 1/(T-t) for
    "jsd"), so both in (0, 1] keeps every beta in (0, 1] (eq. 2 needs it).
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000
    model_var_type: str = "fixedlarge"
    prediction_type: str = "eps"
    # A distilled model's chain length N (Salimans & Ho 2022, Alg. 2): `Diffusion` then samples
    # with DDIM (eta 0) over N trailing timesteps by default (`samplers.default_sampler`).
    distilled_steps: int | None = None

    def __post_init__(self):
        name = type(self).__name__
        check_choice("beta schedule", self.beta_schedule, SCHEDULES)
        check_choice("model_var_type", self.model_var_type, MODEL_VAR_TYPES)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        for field in ("beta_start", "beta_end"):
            value = check_float(f"{name}.{field}", getattr(self, field), 0.0, 1.0, open_lo=True)
            object.__setattr__(self, field, value)
        lo, hi = LIMITS["num_diffusion_timesteps"]
        T = check_int(f"{name}.num_diffusion_timesteps", self.num_diffusion_timesteps, lo, hi)
        object.__setattr__(self, "num_diffusion_timesteps", T)
        if self.distilled_steps is not None:
            check_int(f"{name}.distilled_steps", self.distilled_steps, 1, T)


def _int_tuple(name: str, value, lo: int, hi: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list of ints, got {type(value).__name__} {value!r}")
    return tuple(check_int(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))


@dataclass(frozen=True)
class UNetConfig:
    """The release's UNet (the TF release's `diffusion_tf/models/unet.py`). Channels must be
    multiples of 32 (GroupNorm(32)); `attn_resolutions` must be resolutions
    the network has (resolution / 2**level)."""

    resolution: int = 32
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1

    def __post_init__(self):
        name = type(self).__name__

        def set_int(field, limit):
            object.__setattr__(self, field, check_int(f"{name}.{field}", getattr(self, field), *LIMITS[limit]))

        for field, limit in (
            ("resolution", "resolution"),
            ("in_channels", "channels"),
            ("out_ch", "channels"),
            ("ch", "ch"),
            ("num_res_blocks", "num_res_blocks"),
        ):
            set_int(field, limit)
        # JSON round trips give lists; keep the dataclass hashable.
        ch_mult = _int_tuple(f"{name}.ch_mult", self.ch_mult, *LIMITS["ch_mult"])
        object.__setattr__(self, "ch_mult", ch_mult)
        lo, hi = LIMITS["levels"]
        if not lo <= len(ch_mult) <= hi:
            raise ValueError(f"{name}.ch_mult={list(ch_mult)} has {len(ch_mult)} levels; expected {lo} to {hi}")
        object.__setattr__(self, "dropout", check_float(f"{name}.dropout", self.dropout, 0.0, 1.0, open_hi=True))
        widths = [self.ch, *(self.ch * m for m in ch_mult)]
        if any(w % 32 for w in widths):
            raise ValueError(
                f"every level's channels (ch and ch * ch_mult) must be a multiple of 32 for "
                f"GroupNorm(32); ch={self.ch}, ch_mult={ch_mult} gives {sorted({w for w in widths if w % 32})}"
            )
        if max(widths) > LIMITS["ch"][1]:
            raise ValueError(
                f"{name}: ch * ch_mult = {max(widths)} channels is out of range; "
                f"expected at most {LIMITS['ch'][1]} (ch={self.ch}, ch_mult={ch_mult})"
            )
        levels = len(ch_mult)
        if self.resolution % 2 ** (levels - 1):
            raise ValueError(
                f"resolution {self.resolution} must be divisible by 2**{levels - 1} "
                f"for {levels} levels (ch_mult={ch_mult})"
            )
        have = [self.resolution // 2**i for i in range(levels)]
        attn = _int_tuple(f"{name}.attn_resolutions", self.attn_resolutions, 1, self.resolution)
        if any(r not in have for r in attn):
            raise ValueError(
                f"{name}.attn_resolutions={list(attn)} must be among the resolutions of the levels, {have}"
            )
        object.__setattr__(self, "attn_resolutions", attn)


DIFFUSION_PRESETS = {
    "cifar10": DiffusionConfig(model_var_type="fixedlarge"),
    "lsun": DiffusionConfig(model_var_type="fixedsmall"),
    "digits": DiffusionConfig(model_var_type="fixedlarge"),
}

UNET_PRESETS = {
    "cifar10": UNetConfig(),
    "lsun": UNetConfig(resolution=256, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), dropout=0.0),
    # The bundled model: scikit-learn's 8x8 digits upsampled to 16x16, grayscale.
    # No res blocks going down (strided convs only) keeps a 1000-step chain
    # cheap on a CPU; each level going up still has one.
    "digits": UNetConfig(
        resolution=16,
        in_channels=1,
        out_ch=1,
        ch=32,
        ch_mult=(1, 1, 2),
        num_res_blocks=0,
        attn_resolutions=(4,),
        dropout=0.0,
    ),
}


def config_to_dict(config) -> dict:
    """A config as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict):
    """Build `cls` from a dict (say, parsed JSON), rejecting anything else and
    unknown fields with their names; every field is then checked by `cls`."""
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} must be a JSON object of fields, got {type(data).__name__} {data!r:.80}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(names)}")
    return cls(**data)
