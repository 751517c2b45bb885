"""The `ddpm-jax` command line. Each subcommand lives beside what it drives.

A subcommand module defines `add_arguments(parser)` and `run(args) -> int`;
it is imported only when chosen, so `ddpm-jax sample` never loads gradio.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "sample": ("ddpm_jax.sample_cli", "denoise fresh noise into PNG images"),
    "train": ("ddpm_jax.train_cli", "train a DDPM with optax, checkpointed and resumable"),
    "demo": ("ddpm_jax.demo.cli", "serve the Gradio page to watch diffusion live"),
    "convert": ("ddpm_jax.convert.cli", "convert PyTorch/diffusers checkpoints to ddpm_jax params (and back)"),
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


def main(argv=None) -> int:
    from .cpu_flags import use_cpu_flags

    use_cpu_flags()  # before any subcommand starts JAX's backend
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ddpm-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
