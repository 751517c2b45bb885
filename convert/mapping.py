"""The engine both key tables share: rename modules, transpose layouts, check strictly.

A key table is a tuple of rules `(our module, their module, kind)` whose
patterns hold `{i}` (resolution level) and `{j}` (block index); their side
may also use `{u}`, the up block's position in execution order (levels - 1 - i).
PyTorch layouts on their side, Flax on ours:

| kind      | theirs                         | ours                         |
|-----------|--------------------------------|------------------------------|
| CONV      | Conv2d weight OIHW, bias       | nn.Conv kernel HWIO, bias    |
| LINEAR    | Linear weight (out, in), bias  | nn.Dense kernel (in, out)    |
| CONV1X1   | Conv2d weight (out, in, 1, 1)  | nn.Dense kernel (in, out)    |
| NORM      | GroupNorm weight, bias         | nn.GroupNorm scale, bias     |
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ddpm_jax.config import UNetConfig
from ddpm_jax.weights import SEP, check_finite, expected_shapes, mismatch_summary, unflatten_params

CONV, LINEAR, CONV1X1, NORM = "conv", "linear", "conv1x1", "norm"

_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}  # our leaf -> theirs


class Key(NamedTuple):
    """One array: our flattened name and shape, their state_dict key, how to move between them."""

    ours: str
    theirs: str
    kind: str
    leaf: str
    shape: tuple[int, ...]


# Kernels only (biases, scales pass as they are): kind -> (ours -> theirs, theirs -> ours).
_KERNELS = {
    CONV: (lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),  # HWIO <-> OIHW
    LINEAR: (lambda a: a.T, lambda a: a.T),
    CONV1X1: (lambda a: a.T[:, :, None, None], lambda a: a[:, :, 0, 0].T),
}


def theirs_from_ours(kind: str, leaf: str, a):
    """Our array -> their layout (numpy, or anything with .T and .transpose)."""
    return _KERNELS[kind][0](a) if leaf == "kernel" else a


def ours_from_theirs(kind: str, leaf: str, a: np.ndarray) -> np.ndarray:
    """Their array -> our layout; the caller has checked its shape."""
    return _KERNELS[kind][1](a) if leaf == "kernel" else a


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\d+)", re.escape(template)) + "$")


@functools.lru_cache(maxsize=16)
def key_table(rules: tuple, config: UNetConfig) -> tuple[Key, ...]:
    """Every param of the UNet built from `config`, with its key on their side."""
    compiled = [(_pattern(ours), theirs, kind) for ours, theirs, kind in rules]
    levels = len(config.ch_mult)
    keys = []
    for name, shape in expected_shapes(config).items():
        module, leaf = name.rsplit(SEP, 1)
        for pattern, theirs, kind in compiled:
            m = pattern.match(module)
            if m:
                idx = {k: int(v) for k, v in m.groupdict().items()}
                if "i" in idx:
                    idx["u"] = levels - 1 - idx["i"]
                keys.append(Key(name, f"{theirs.format(**idx)}.{_LEAVES[leaf]}", kind, leaf, shape))
                break
        else:
            raise RuntimeError(f"the key table has no rule for our module {module!r}")
    return tuple(keys)


def mismatches(state_dict: dict, keys: Sequence[Key]):
    """(missing, unexpected, mis-shaped) keys on their side, sorted; all empty when it fits."""
    want = {
        k.theirs: tuple(theirs_from_ours(k.kind, k.leaf, np.broadcast_to(np.float32(0), k.shape)).shape) for k in keys
    }
    got = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshaped = [f"{k}: {got[k]} (expected {want[k]})" for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    return missing, unexpected, misshaped


def fits(state_dict: dict, keys: Sequence[Key]) -> bool:
    return not any(mismatches(state_dict, keys))


def to_flax(
    state_dict: dict, keys: Sequence[Key], config: UNetConfig, *, source: str, config_label: str, hint: str = ""
) -> dict:
    """Their state_dict (numpy float arrays) -> our nested params, float32.

    Strict: every key of theirs is consumed, every param of ours filled, every
    shape checked and every value finite; otherwise ValueError naming the
    first few offenders.
    """
    bad = mismatches(state_dict, keys)
    if any(bad):
        raise ValueError(
            f"{source} does not fit the UNet config {config_label} ({config}): {mismatch_summary(*bad)}{hint}"
        )
    flat = {
        k.ours: np.ascontiguousarray(
            ours_from_theirs(k.kind, k.leaf, np.asarray(state_dict[k.theirs])), dtype=np.float32
        )
        for k in keys
    }
    check_finite(flat, source=source)
    return unflatten_params(flat)


def from_flax(flat_params: dict, keys: Sequence[Key]) -> dict[str, np.ndarray]:
    """Our flattened params -> their state_dict of numpy float32 arrays."""
    return {
        k.theirs: np.ascontiguousarray(theirs_from_ours(k.kind, k.leaf, np.asarray(flat_params[k.ours], np.float32)))
        for k in keys
    }
