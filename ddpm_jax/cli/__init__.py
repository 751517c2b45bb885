"""The `ddpm-jax` command line: one module a command, each only parsing its flags and calling the library.

A command module defines `add_arguments(parser)` and `run(args) -> int`;
it is imported only when chosen, so `ddpm-jax sample` never loads gradio.
The arguments several commands share, and loading a model, are in `common`.

Errors: what a user can cause or fix (`EXPECTED_ERRORS`: bad values and
types, files missing, unreadable, unwritable or in the way, a full or
read-only disk, failed downloads, too little memory) ends the command with
one line on stderr and exit code 2. Anything else is a bug and keeps its
traceback; `DDPM_JAX_DEBUG=1` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys

COMMANDS = {
    "sample": ("ddpm_jax.cli.sample", "denoise fresh noise into PNG images"),
    "train": ("ddpm_jax.cli.train", "train a DDPM with optax, checkpointed and resumable"),
    "distill": ("ddpm_jax.cli.distill", "halve a model's sampling steps, round by round (progressive distillation)"),
    "demo": ("ddpm_jax.demo.cli", "serve the Gradio page to watch diffusion live"),
    "inpaint": ("ddpm_jax.cli.inpaint", "fill the masked part of a picture (RePaint), K completions and a grid"),
    "interpolate": ("ddpm_jax.cli.interpolate", "a strip from picture A to B through the latent x_t (paper Sec. 4.4)"),
    "convert": ("ddpm_jax.convert.cli", "convert PyTorch/diffusers checkpoints to ddpm_jax params (and back)"),
    "eval": ("ddpm_jax.cli.eval", "bits/dim (the variational bound), rate-distortion, FID/KID/IS"),
}


def build_parser(argv) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm-jax", description="DDPMs in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(run=mod.run)
    return parser


# OSError covers FileNotFoundError, PermissionError, IsADirectoryError, a full
# or read-only disk and download.DownloadError; MemoryError a refused host
# allocation. XLA's out-of-device-memory error is a RuntimeError (see _expected).
EXPECTED_ERRORS = (ValueError, TypeError, OSError, MemoryError)


def _expected(err: Exception) -> bool:
    return isinstance(err, EXPECTED_ERRORS) or (
        isinstance(err, RuntimeError) and str(err).startswith("RESOURCE_EXHAUSTED")
    )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv=None) -> int:
    # (importing ddpm_jax, above, set the fast CPU path's XLA flags: see ddpm_jax.cpu_flags)
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.run(args)
    except Exception as err:
        if not _expected(err) or os.environ.get("DDPM_JAX_DEBUG", "").strip() not in ("", "0"):
            raise
        print(f"ddpm-jax {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def command() -> int:
    """The `ddpm-jax` program: `main`, then `gc.freeze()` so that the interpreter's exit skips its
    last cyclic collection over every object JAX made (0.4-1 s of each command's wall time on this
    project's CPUs; files are written and closed by then, and `atexit` handlers still run)."""
    code = main()
    gc.freeze()
    return code
