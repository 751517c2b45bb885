"""XLA flags for the fast CPU path, set before JAX starts its backend.

XLA reads `XLA_FLAGS` once, when the first JAX computation starts the
backend; flags set later do nothing. `import ddpm_jax` adds them to
`XLA_FLAGS` (after the user's own, which win) when JAX's backend has not
started yet, so a library user gets the fast path without a call; set
`DDPM_JAX_CPU_FLAGS=0` to leave `XLA_FLAGS` alone. A program that ran JAX
before importing ddpm_jax calls `use_cpu_flags()` before its first JAX
computation, or sets the environment itself (`flags()` lists them for the
installed jaxlib). The flags only concern XLA's CPU backend; GPU and TPU
runs ignore them. `Diffusion` warns when it runs the fast CPU path without
them.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings

# Per jaxlib minor version, since unknown flags abort the process. jaxlib
# 0.10's CPU backend hands convolutions, dots, reductions and elementwise
# fusions to YNNPACK; with these off XLA runs its own, and the fast path's
# step took 34% less time at cifar10 batch 1 and 18% less at batch 8 on this
# project's 2-core AMD EPYC (bench/sampling.py: jax_fast vs jax_fast_noflags,
# see the README). Other versions get no flags until measured.
FLAGS_BY_JAXLIB = {
    "0.10": ("--xla_cpu_experimental_ynn_fusion_type=-dot,-reduce,-individual_convolution,-individual_dot,-eltwise",),
}


def flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
    """The fast CPU path's XLA flags for `jaxlib_version` (default: the one installed)."""
    if jaxlib_version is None:
        try:
            jaxlib_version = importlib.metadata.version("jaxlib")
        except importlib.metadata.PackageNotFoundError:
            return ()
    return FLAGS_BY_JAXLIB.get(".".join(jaxlib_version.split(".")[:2]), ())


def _backend_started() -> bool:
    """Whether JAX has created its backends (then XLA_FLAGS is read already)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # noqa: PLC2701 (no public equivalent in jax 0.10)

    return xla_bridge.backends_are_initialized()


def missing(env=None) -> list[str]:
    """The fast path's flags whose name XLA_FLAGS in `env` (default os.environ) does not set."""
    current = (os.environ if env is None else env).get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in current}
    return [f for f in flags() if f.split("=")[0] not in names]


def _hint() -> str:
    return (
        f"import ddpm_jax (or call ddpm_jax.cpu_flags.use_cpu_flags()) before any JAX computation, or start "
        f"the process with XLA_FLAGS='{' '.join(flags())}'"
    )


def use_cpu_flags(env=None) -> bool:
    """Add the fast CPU path's flags to XLA_FLAGS in `env` (default os.environ).

    A flag the user already set (same name) is left as it is. Returns False,
    with a RuntimeWarning, when JAX's backend already started in this
    process: the flags then take effect only in a new process.
    """
    target = os.environ if env is None else env
    add = missing(target)
    if add:
        target["XLA_FLAGS"] = " ".join([target.get("XLA_FLAGS", ""), *add]).strip()
    if env is None and add and _backend_started():
        warnings.warn(
            f"JAX's backend already started, so the fast CPU path's XLA flags apply only to a new process: {_hint()}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


OPT_OUT = "DDPM_JAX_CPU_FLAGS"  # "0": importing ddpm_jax leaves XLA_FLAGS as it is


def use_cpu_flags_at_import() -> None:
    """`use_cpu_flags()` when ddpm_jax is imported, unless JAX's backend has started (the flags
    would do nothing; `Diffusion` then warns) or the environment opts out (`OPT_OUT`=0)."""
    if os.environ.get(OPT_OUT) != "0" and not _backend_started():
        use_cpu_flags()


def warn_if_missing(stacklevel: int = 3) -> None:
    """A RuntimeWarning when the fast CPU path runs without its XLA flags
    (Python shows it once per call site)."""
    if missing():
        warnings.warn(
            f"the fast CPU path runs without its XLA flags (same results, slower): {_hint()}",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
