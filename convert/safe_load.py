"""Read PyTorch checkpoints as name -> numpy float32, never running pickled code.

Torch pickles (.ckpt, .pt, .pth, .bin) go only through
`torch.load(..., weights_only=True)`, whose unpickler builds tensors and plain
containers and refuses every other global. Safetensors files are read with
the safetensors library alone, without torch.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
# What a plain tensor checkpoint's pickle imports (torch.load's weights_only allows these).
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")


def _check_torch_file(path: Path) -> bool:
    """True for a zip archive (torch.save), False for a bare pickle (the
    legacy format); ValueError for anything else, naming what it is."""
    size = path.stat().st_size  # FileNotFoundError, IsADirectoryError... pass through
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a PyTorch checkpoint (a download or copy cut short?)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_ZIP_MAGIC):
        return True
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= pickle.HIGHEST_PROTOCOL:  # PROTO n
        return False
    raise ValueError(
        f"{path} is not a PyTorch checkpoint: neither a zip archive (torch.save) nor a pickle "
        f"(it starts with {head!r}, {size} bytes)"
    )


def _imports(path: Path, is_zip: bool) -> list[str] | None:
    """The globals the checkpoint's pickle would import, other than a tensor
    checkpoint's, read with pickletools (nothing runs); None when not even
    its first pickle parses."""
    found, strings, parsed = [], [], 0
    try:
        if is_zip:
            with zipfile.ZipFile(path) as z:
                f = io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
        else:
            f = open(path, "rb")
        with f:
            while f.read(1) == b"\x80":  # the legacy format is several pickles in a row
                f.seek(-1, io.SEEK_CUR)
                for op, arg, _ in pickletools.genops(f):
                    if isinstance(arg, str):
                        strings.append(arg)
                    if op.name in ("GLOBAL", "INST"):
                        found.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL":
                        found.append(".".join(strings[-2:]))
                parsed += 1
    except (ValueError, KeyError, StopIteration, zipfile.BadZipFile, OSError):
        if not parsed:
            return None
    return [g for g in found if not g.startswith(_TENSOR_GLOBALS)]


def load_safetensors(path) -> dict[str, np.ndarray]:
    """A .safetensors file -> numpy float32 arrays (no torch)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file of float tensors ({err})") from err
    return {k: np.asarray(v, dtype=np.float32) for k, v in flat.items()}


def load_torch(path) -> dict[str, np.ndarray]:
    """A torch-pickled state_dict -> numpy float32, via weights_only=True.

    A pickle that asks for anything but tensors and containers (for example
    one whose unpickling would call a function) is refused with ValueError
    before any of it runs.
    """
    try:
        import torch
    except ImportError as err:
        raise ValueError(
            f"reading {path} needs PyTorch (a pickled checkpoint): pip install 'ddpm_jax[torch]', "
            "or give a .safetensors file"
        ) from err
    path = Path(path)
    is_zip = _check_torch_file(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        after = [b for a, b in zip(lines, lines[1:]) if a.endswith("WeightsUnpickler error:")]
        why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), (after or lines or [""])[-1])
        calls = _imports(path, is_zip)
        if calls is None:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: its pickle is damaged ({why})") from None
        if calls:
            raise ValueError(
                f"refusing to load {path}: it is not a plain tensor checkpoint and unpickling it could "
                f"run code (it imports {', '.join(sorted(set(calls))[:3])}; torch.load with weights_only=True: {why})"
            ) from None
        raise ValueError(
            f"{path} is not a plain tensor checkpoint (torch.load with weights_only=True: {why})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        kind = "zip archive" if is_zip else "pickle"
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint: a damaged or truncated {kind} "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors")
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def load_state_dict(path) -> dict[str, np.ndarray]:
    """A checkpoint file by its suffix: .safetensors, or a torch pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return load_torch(path)
    raise ValueError(
        f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
    )
