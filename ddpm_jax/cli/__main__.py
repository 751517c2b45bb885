"""`python -m ddpm_jax.cli ...`: the `ddpm-jax` command."""

import sys

from . import command

if __name__ == "__main__":
    sys.exit(command())
