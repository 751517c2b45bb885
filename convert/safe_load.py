"""Read PyTorch checkpoints as name -> numpy float32, never running pickled code.

Torch pickles (.ckpt, .pt, .pth, .bin) go only through
`torch.load(..., weights_only=True)`, whose unpickler builds tensors and plain
containers and refuses every other global. Safetensors files are read with
the safetensors library alone, without torch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


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
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), lines[-1] if lines else "")
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor checkpoint and unpickling it could "
            f"run code (torch.load with weights_only=True: {why})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({err})") from err
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
        f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or one of "
        f"{', '.join(TORCH_SUFFIXES)}"
    )
