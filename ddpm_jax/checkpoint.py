"""Training checkpoints: a whole `TrainState` in one safetensors file, atomically.

Every leaf of the state (params, EMA params, optimizer state, step, PRNG key)
is stored under its pytree path; the configs, the step and a SHA-256 of all
tensor bytes go in the JSON metadata. Nothing is pickled. A file is written
to a temporary name, fsynced, then renamed, so a killed run leaves either the
old set of checkpoints or the new one, never a torn file under a real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from . import atomic
from .atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = "ddpm_jax.train_checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{8})\.safetensors$")


def checkpoint_path(folder, step: int) -> Path:
    return Path(folder) / f"ckpt-{int(step):08d}.safetensors"


def list_checkpoints(folder) -> list[Path]:
    """Checkpoint files in `folder`, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_temporaries(folder) -> list[Path]:
    """Delete the half-written checkpoints (`.ckpt-<step>.safetensors.<random>.tmp`)
    a killed run left in `folder`; `save_checkpoint` does it before each write.
    Only the run that owns the folder may call it."""
    return atomic.remove_temporaries(folder, "ckpt-*.safetensors") if Path(folder).is_dir() else []


def _flatten(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def tensor_digest(flat: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(flat):
        a = np.ascontiguousarray(flat[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(folder, state, metadata: dict, keep: int = 3) -> Path:
    """Write `state` as ckpt-<step>.safetensors; keep the newest `keep` files.

    `metadata` (JSON-serialisable) is stored beside the step and digest.
    Refuses to replace an existing file of the same step. Temporary files a
    killed run left are removed first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folder)
    step = int(state.step)
    path = checkpoint_path(folder, step)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a checkpoint")
    flat = _flatten(state)
    meta = {
        "format": FORMAT,
        "step": str(step),
        "sha256": tensor_digest(flat),
        "run": json.dumps(metadata, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(flat, tmp, metadata=meta)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray], int]:
    """(run metadata, flat arrays, step) of a checkpoint, verified by its digest.

    Raises ValueError naming the file when it is unreadable, not a training
    checkpoint, or its contents do not match their recorded SHA-256.
    """
    path = Path(path)
    hint = "it was left in place; move it away to resume from an earlier checkpoint"
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        flat = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is unreadable ({err}); {hint}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a ddpm_jax training checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}); {hint}"
        )
    if tensor_digest(flat) != meta.get("sha256"):
        raise ValueError(f"checkpoint {path} is corrupt: its contents do not match their SHA-256; {hint}")
    try:
        run = json.loads(meta["run"])
        step = int(meta["step"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has unreadable metadata ({err!r}); {hint}") from err
    return run, flat, step


def restore_state(flat: dict[str, np.ndarray], template, source: str = "checkpoint"):
    """Fill `template`'s pytree with `flat`; every path, shape and dtype must match."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    want = {jax.tree_util.keystr(p): leaf for p, leaf in leaves}
    missing = sorted(set(want) - set(flat))
    unexpected = sorted(set(flat) - set(want))
    bad = [
        f"{k}: {flat[k].dtype}{list(flat[k].shape)} != {np.dtype(want[k].dtype)}{list(want[k].shape)}"
        for k in sorted(set(want) & set(flat))
        if flat[k].shape != tuple(want[k].shape) or flat[k].dtype != np.dtype(want[k].dtype)
    ]
    if missing or unexpected or bad:
        parts = [
            f"{len(items)} {label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", bad))
            if items
        ]
        raise ValueError(f"{source} does not fit this model/optimizer: " + "; ".join(parts))
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in leaves])
