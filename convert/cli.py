"""`ddpm-jax convert SRC DST`: PyTorch checkpoints to ddpm_jax params, and back.

SRC is anything `resolve.resolve` takes: a port checkpoint (.ckpt/.pt/.pth/.bin,
or .safetensors with the port's keys), a diffusers model folder, a Hub id or a
registered name; DST is a ddpm_jax .safetensors file. With --to-torch, DST is
the port's state_dict (.ckpt). DST is never one of SRC's files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ddpm_jax.cli.common import add_preset

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("src", help="port checkpoint, diffusers folder, Hub id (owner/name) or registered name")
    p.add_argument("dst", help="output: ddpm_jax .safetensors (or a .ckpt with --to-torch)")
    add_preset(p, "preset of a port checkpoint (default: the one its shapes fit)")
    p.add_argument(
        "--to-torch",
        action="store_true",
        help="the inverse: write the port's state_dict (torch.save) from ddpm_jax params",
    )


def save_torch_state_dict(state: dict, path):
    """torch.save a name -> numpy dict as tensors, atomically."""
    import torch

    from ddpm_jax.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)


def check_destination(dst: Path, sources: list[Path]):
    """Refuse, before anything is read or written, a DST that is a folder or one of SRC's files."""
    if dst.is_dir():
        raise ValueError(f"DST {dst} is a folder; give a file name, e.g. {dst / 'model.safetensors'}")
    if dst.exists() and any(dst.resolve() == s.resolve() for s in sources if s.exists()):
        raise ValueError(f"DST {dst} is the source checkpoint itself; refusing to overwrite it: choose another DST")


def run(args) -> int:
    from ddpm_jax.weights import save_weights

    from .port import flax_to_port
    from .resolve import convert, load, resolve, source_files

    start = time.perf_counter()
    dst = Path(args.dst).expanduser()
    if args.to_torch and args.config:
        raise ValueError(
            "--config names the preset of a port checkpoint given as SRC; it does not apply with --to-torch"
        )
    source = resolve(args.src)
    check_destination(dst, source_files(source))
    if args.to_torch:
        dcfg, ucfg, params = load(source)
        if dcfg.prediction_type != "eps":
            raise ValueError(
                f"{args.src} predicts {dcfg.prediction_type!r}, but the port's state_dict has no config and is read "
                "as eps; keep it as ddpm_jax params (or a diffusers folder, whose scheduler config records it)"
            )
        if dcfg.distilled_steps is not None:
            log.warning(
                "the port's state_dict does not record that %s samples in %d steps", args.src, dcfg.distilled_steps
            )
        save_torch_state_dict(flax_to_port(params, ucfg), dst)
    else:
        # A released name goes through the cache (fetched and converted once).
        dcfg, ucfg, params = (
            load(source) if source.kind == "released" and args.config is None else convert(source, args.config)
        )
        save_weights(dst, params, diffusion_config=dcfg, unet_config=ucfg)
    log.info("wrote %s in %.1f s", dst, time.perf_counter() - start)
    return 0
