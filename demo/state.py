"""One browser session's state, and the checks on what the page sends.

Gradio keeps one `Session` per browser tab (a deep copy of the initial
value). Chains mutate it in place under its lock after every chunk, so the
progress made so far survives a Stop. `generation` names the chain allowed
to write: starting a chain, Reset or Stop bumps it, and an older chain
notices at its next chunk and ends without writing.
"""

from __future__ import annotations

import copy
import math
import threading

import numpy as np

TRAJECTORY_BUDGET_BYTES = 64 * 2**20


def parse_int(value, what: str, lo: int, hi: int) -> int:
    """An integer from a number field (int, integral float, or numeric text).

    Raises ValueError with a message for the page when the value is missing,
    not a number, not whole, or outside lo..hi.
    """
    if isinstance(value, str):
        value = value.strip()
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be between {lo} and {hi}, got {value}")
    return value


class Trajectory:
    """Frames (HWC uint8, model resolution) of the session's chain since Reset.

    Bounded memory: past the budget every other frame is dropped, so a long
    trajectory keeps its whole span at a coarser time resolution.
    """

    def __init__(self, budget_bytes: int = TRAJECTORY_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self.frames: list[np.ndarray] = []

    def clear(self):
        self.frames = []

    def add(self, frame: np.ndarray):
        self.frames.append(frame)
        if len(self.frames) > 2 and sum(f.nbytes for f in self.frames) > self.budget_bytes:
            self.frames = self.frames[::2] + ([frame] if len(self.frames) % 2 == 0 else [])


class Session:
    """x_t (n, H, W, C) float32 after `step` forward steps, drawn from `seed`.

    A plain class, not a dataclass: Gradio serialises dataclass values of
    gr.State into the page config, and a lock cannot be serialised.
    """

    _FIELDS = ("choice", "ema", "seed", "x", "step", "pred_x0", "generation", "branches", "trajectory")

    def __init__(self):
        self.choice: str | None = None
        self.ema = False
        self.seed = 0
        self.x = None  # jax.Array (n, H, W, C)
        self.step = 0
        self.pred_x0 = None  # the last denoise chunk's prediction of x_0
        self.generation = 0  # the chain allowed to write (see the module docstring)
        self.branches = 0  # branch presses, for fresh keys each time
        self.trajectory = Trajectory()
        self.lock = threading.Lock()

    def __deepcopy__(self, memo):
        """A copy with its own lock (Gradio deep-copies the initial value per tab)."""
        new = Session()
        with self.lock:
            for name in self._FIELDS:
                setattr(new, name, copy.deepcopy(getattr(self, name), memo))
        return new

    @property
    def n(self) -> int:
        return 0 if self.x is None else int(self.x.shape[0])
