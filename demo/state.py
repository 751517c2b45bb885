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

TRAJECTORY_BUDGET_BYTES = 16 * 2**20
TRAJECTORY_MAX_FRAMES = 1024


class InvalidInput(str):
    """A value the page refused before its handler ran (`inputs.screen_pictures`);
    the handler answers with this message."""


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


def parse_bool(value, what: str) -> bool:
    """A checkbox's value: True or False, nothing else (a string "false" is not False)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{what} must be true or false, got {value!r}")


class Trajectory:
    """Frames (HWC uint8, model resolution) of the session's chain since Reset.

    Bounded memory: past `budget_bytes` or `max_frames`, every other frame is
    dropped, so a long trajectory keeps its whole span at a coarser time
    resolution.
    """

    def __init__(self, budget_bytes: int = TRAJECTORY_BUDGET_BYTES, max_frames: int = TRAJECTORY_MAX_FRAMES):
        self.budget_bytes, self.max_frames = budget_bytes, max_frames
        self.frames: list[np.ndarray] = []

    def clear(self):
        self.frames = []

    def add(self, frame: np.ndarray):
        self.frames.append(frame)
        over = len(self.frames) > self.max_frames or sum(f.nbytes for f in self.frames) > self.budget_bytes
        if len(self.frames) > 2 and over:
            self.frames = self.frames[::2] + ([frame] if len(self.frames) % 2 == 0 else [])


class Session:
    """x_t (n, H, W, C) float32 after `step` forward steps, drawn from `seed`.

    A plain class, not a dataclass: Gradio serialises dataclass values of
    gr.State into the page config, and a lock cannot be serialised.
    """

    _FIELDS = (
        "choice",
        "ema",
        "sampler",
        "chain_steps",
        "seed",
        "x",
        "step",
        "pred_x0",
        "generation",
        "branches",
        "trajectory",
        "downloads",
    )

    def __init__(self):
        self.choice: str | None = None
        self.ema = False
        self.sampler = "ddpm"  # the chain the tab runs: a sampler over `chain_steps` steps (None: all T)
        self.chain_steps = None
        self.seed = 0
        self.x = None  # jax.Array (n, H, W, C)
        self.step = 0
        self.pred_x0 = None  # the last denoise chunk's prediction of x_0
        self.generation = 0  # the chain allowed to write (see the module docstring)
        self.branches = 0  # branch presses, for fresh keys each time
        self.trajectory = Trajectory()
        self.downloads: list = []  # files made for this tab, deleted once served (see Demo.forget_downloads)
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
