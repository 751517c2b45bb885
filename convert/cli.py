"""`ddpm-jax convert SRC DST`: PyTorch checkpoints to ddpm_jax params, and back.

SRC is a port checkpoint (.ckpt/.pt/.pth/.bin, or .safetensors with the
port's keys), a diffusers model folder, a Hub id or a registered name;
DST is a ddpm_jax .safetensors file. With --to-torch, SRC is anything
`Diffusion.from_pretrained` takes and DST the port's state_dict (.ckpt).
"""

from __future__ import annotations

import logging
import time

from ddpm_jax.config import UNET_PRESETS

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("src", help="port checkpoint, diffusers folder, Hub id (owner/name) or registered name")
    p.add_argument("dst", help="output: ddpm_jax .safetensors (or a .ckpt with --to-torch)")
    p.add_argument("--config", choices=sorted(UNET_PRESETS), default=None,
                   help="preset of a port checkpoint (default: the one its shapes fit)")
    p.add_argument("--to-torch", action="store_true",
                   help="the inverse: write the port's state_dict (torch.save) from ddpm_jax params")


def save_torch_state_dict(state: dict, path):
    """torch.save a name -> numpy dict as tensors, atomically."""
    import torch

    from ddpm_jax.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)


def run(args) -> int:
    from ddpm_jax.pretrained import REGISTRY, convert_checkpoint, load_pretrained
    from ddpm_jax.weights import save_weights

    from .port import flax_to_port

    start = time.perf_counter()
    if args.to_torch:
        if args.config:
            raise ValueError("--config names the preset of a port checkpoint given as SRC; "
                             "it does not apply with --to-torch")
        _, ucfg, params = load_pretrained(args.src)
        save_torch_state_dict(flax_to_port(params, ucfg), args.dst)
    else:
        if args.src in REGISTRY and args.config is None:
            dcfg, ucfg, params = load_pretrained(args.src)
        else:
            dcfg, ucfg, params = convert_checkpoint(args.src, args.config)
        save_weights(args.dst, params, dcfg, ucfg)
    log.info("wrote %s in %.1f s", args.dst, time.perf_counter() - start)
    return 0
