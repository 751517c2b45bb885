"""Winograd's batched products on the CPU by ddpm_jax's own kernel (`batched_matmul.cc`).

XLA's CPU runtime runs a batched dot one matmul after another, and a matmul of a few rows (the
tiles of one image) on one core, so at batch 1 half of the cifar10 step ran on one of two cores.
The kernel shares the products of one call between XLA's intra-op threads. `prepare()` compiles
it with the system's C++ compiler (`$CXX`, else `c++`; `-O3 -march=native` against jaxlib's FFI
headers) into `<cache>/native/`, once per source, jaxlib and CPU (2-3 s), loads it and registers
it with XLA. `batched_matmul` runs it once it is ready, for float32 on the CPU, and XLA's batched
dot otherwise (another dtype or platform, `DDPM_JAX_NATIVE=0`, or no compiler: a warning says
why). Both give the same products to float32 rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

from .atomic import atomic_path

log = logging.getLogger(__name__)

TARGET = "ddpm_jax_batched_matmul"
SOURCE = Path(__file__).with_suffix(".cc")
_lock = threading.Lock()
_ready: list[bool] = []  # [outcome of the first prepare()]
_xla_only = contextvars.ContextVar("ddpm_jax_xla_dot_only", default=False)


def enabled() -> bool:
    """False when DDPM_JAX_NATIVE is 0/false/no/off (read at each call)."""
    return os.environ.get("DDPM_JAX_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_identity() -> str:
    """What -march=native compiles for: the machine and, on Linux, the CPU's feature flags."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.system()}-{platform.machine()}-{flags}"


def compiler() -> str:
    """The C++ compiler that builds the kernel: $CXX, else c++ on the PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or "g++"


def library_path() -> Path:
    """Where the kernel built for this source, jaxlib, compiler and CPU lives."""
    from .download import cache_dir

    key = hashlib.sha256(
        b"\0".join(
            [
                SOURCE.read_bytes(),
                importlib.metadata.version("jaxlib").encode(),
                compiler().encode(),
                _cpu_identity().encode(),
            ]
        )
    ).hexdigest()
    return cache_dir() / "native" / f"batched_matmul-{key[:16]}.so"


def build(path: Path, march: str = "native") -> None:
    """Compile SOURCE for the CPU `march` names (-march) into the shared library `path` (written
    whole or not at all)."""
    with atomic_path(path) as tmp:
        cmd = [compiler(), "-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-w"]
        cmd += ["-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-2000:]}")


def prepare() -> bool:
    """Build (if needed), load and register the kernel, once per process, where JAX's default
    backend is the CPU; whether it is ready. Where it cannot be, a warning says why and
    `batched_matmul` keeps XLA's batched dot."""
    with _lock:
        if not _ready:
            _ready.append(enabled() and jax.default_backend() == "cpu" and _load())
        return _ready[0]


def _load() -> bool:
    try:
        path = library_path()
        if not path.exists():
            log.info("building ddpm_jax's CPU kernel for Winograd's products into %s", path)
            build(path)
        load(path)
        return True
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        log.warning(
            "ddpm_jax's CPU kernel for Winograd's products is not available (%s); XLA's batched dot "
            "runs them instead (slower at batch 1). Set CXX to a C++17 compiler, or "
            "DDPM_JAX_NATIVE=0 to leave it off without this warning.",
            e,
        )
        return False


def load(path: Path) -> None:
    """Register the kernel built at `path` with XLA as TARGET (once per process)."""
    handler = getattr(ctypes.CDLL(str(path)), TARGET)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def ready() -> bool:
    """Whether `prepare()` has made the kernel ready in this process (it does not try)."""
    return bool(_ready and _ready[0])


@contextlib.contextmanager
def xla_dot():
    """Programs traced in this block run XLA's batched dot, kernel or not (a function jitted and
    traced before keeps its program): XLA's cost analysis counts no FLOPs inside a custom call,
    and bench/sampling.py counts a step's this way."""
    token = _xla_only.set(True)
    try:
        yield
    finally:
        _xla_only.reset(token)


def _xla(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
    batch = tuple(range(a.ndim - 2))
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch)), preferred_element_type=out_dtype)


@jax.custom_jvp
def _native(a: jax.Array, b: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct(a.shape[:-1] + b.shape[-1:], jnp.float32)
    return jax.lax.platform_dependent(
        a,
        b,
        cpu=lambda a, b: jax.ffi.ffi_call(TARGET, out, vmap_method="broadcast_all")(a, b),
        default=lambda a, b: _xla(a, b, jnp.float32),
    )


@_native.defjvp
def _native_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    return _native(a, b), _xla(da, b, jnp.float32) + _xla(a, db, jnp.float32)


def batched_matmul(a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
    """a @ b over the last two axes, the leading ones (equal in both) a batch: (..., M, K) x
    (..., K, N) -> (..., M, N) in `out_dtype` (default a's). The kernel where `prepare()` made it
    ready and everything is float32, else XLA's dot_general."""
    out_dtype = jnp.dtype(out_dtype or a.dtype)
    if ready() and not _xla_only.get() and a.dtype == b.dtype == out_dtype == jnp.float32:
        return _native(a, b)
    return _xla(a, b, out_dtype)
