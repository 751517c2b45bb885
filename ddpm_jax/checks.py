"""Checks for numbers that come from outside (files, flags, API arguments).

Each returns the value as a plain Python int/float or raises: TypeError for
the wrong type, ValueError for a value out of range, both naming the field,
the value and the valid range.
"""

from __future__ import annotations

import math
import numbers
import operator


def check_int(name: str, value, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]; bools, floats and strings are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got the bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range; expected {lo} <= {name} <= {hi}")
    return value


def check_float(name: str, value, lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> float:
    """`value` as a finite float in the interval lo..hi (each end closed unless told)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    below = value <= lo if open_lo else value < lo
    above = value >= hi if open_hi else value > hi
    if not math.isfinite(value) or below or above:
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        raise ValueError(f"{name}={value!r} is out of range; expected a finite number in {interval}")
    return value


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value
