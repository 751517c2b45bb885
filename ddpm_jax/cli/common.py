"""What the `ddpm-jax` commands share: their common arguments, each declared here once, the
check of an output folder, and loading a model the same way for every command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_MODEL = "digits"  # the bundled model: small, works offline
MODEL_HELP = "a bundled or pretrained name, or a .safetensors path"


def add_model(p, help: str = MODEL_HELP, *, repeat: bool = False):
    """--model: `DEFAULT_MODEL` unless given; with `repeat`, the list of every --model given
    (None when none is: the command then uses [DEFAULT_MODEL])."""
    if repeat:
        p.add_argument("--model", action="append", metavar="NAME", help=help)
    else:
        p.add_argument("--model", default=DEFAULT_MODEL, help=help)


def add_seed(p, help: str | None = None, *, default: int | None = 0):
    p.add_argument("--seed", type=int, default=default, help=help)


def add_out(p, help: str = "output folder", *, required: bool = True):
    p.add_argument("--out", required=required, help=help)


def add_precision(p):
    from ..ops import PRECISIONS

    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="float32",
        help="how the UNet computes: float32; bfloat16; mixed_bf16 (bfloat16 operands, "
        "float32 accumulation; see bench/precision.py for how far it moves the samples)",
    )


def add_preset(p, help: str, *, default: str | None = None):
    """--config: a name of `config.UNET_PRESETS`."""
    from ..config import UNET_PRESETS

    p.add_argument("--config", choices=sorted(UNET_PRESETS), default=default, help=help)


def add_data(p):
    """--data and --strict-data: the images a training or distillation run learns from."""
    p.add_argument(
        "--data", required=True, help="'digits' (scikit-learn's, training split), an image folder, or a .npy/.npz"
    )
    p.add_argument(
        "--strict-data", action="store_true", help="stop on a bad file in an image folder instead of skipping it"
    )


def add_optimizer(p, base=None, decay_default="0"):
    """The `TrainConfig` flags (`train_config` reads them); each None unless given. Their defaults
    are `base`'s (a `TrainConfig`) when given, else the preset's; `decay_default` is --decay-steps' help."""

    def default(field):
        return "the preset's" if base is None else repr(getattr(base, field))

    p.add_argument("--batch", type=int, default=None, help=f"batch size (default: {default('batch_size')})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {default('learning_rate')})")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps")
    p.add_argument(
        "--decay-steps",
        type=int,
        default=None,
        help=f"anneal the lr linearly to 0 at this step, 0: no decay (default: {decay_default})",
    )
    p.add_argument("--grad-clip", type=float, default=None, help="global gradient norm clip")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay per step")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"random horizontal flips (--flip / --no-flip; default: {default('random_flip')})",
    )
    add_seed(p, default=None)


def train_config(base, args):
    """`base` (a `TrainConfig`) with the flags of `add_optimizer` that were given."""
    from ..trainer import with_overrides

    return with_overrides(
        base,
        batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        decay_steps=args.decay_steps,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        random_flip=args.flip,
        seed=args.seed,
    )


def add_checkpoints(p, what: str = "the newest checkpoint in --out"):
    """--resume and how often a run checkpoints and logs (`trainer.RunOptions`)."""
    p.add_argument("--resume", action="store_true", help=f"continue from {what}")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--log-every", type=int, default=50, help="log.jsonl line every N steps")


def check_out_dir(path, flag: str = "--out") -> Path:
    """`path` if it is, or can become, a folder this process can write in;
    else ValueError saying why. Nothing is created: call it before loading
    a model, so that a bad `--out` fails at once."""
    path = Path(path).expanduser()
    there = path  # the nearest part of the path that exists
    while not there.is_dir():
        if there.exists() or there.is_symlink():
            raise ValueError(f"{flag} {path}: {there} is a file, not a folder; give a folder path")
        there = there.parent
    if not os.access(there, os.W_OK | os.X_OK):
        why = "on a read-only file system" if os.statvfs(there).f_flag & os.ST_RDONLY else "not writable"
        raise ValueError(f"{flag} {path}: cannot write there, {there} is {why}")
    return path


def load_model(model: str, out, *, sharded: bool = False, precision: str = "float32"):
    """`Diffusion.from_pretrained(model)`, after what costs nothing: `out`, the folder the command
    writes into (None: it writes none), is checked (`check_out_dir`) and JAX's compilation cache
    is turned on. With `sharded`, the params go on every local device when there are several."""
    import jax

    from ..compile_cache import enable_compilation_cache
    from ..pipeline import Diffusion
    from ..sharding import data_mesh

    if out is not None:
        check_out_dir(out)
    enable_compilation_cache()
    mesh = data_mesh() if sharded and jax.local_device_count() > 1 else None
    return Diffusion.from_pretrained(model, mesh=mesh, precision=precision)
