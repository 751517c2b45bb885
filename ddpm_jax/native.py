"""ddpm_jax's CPU kernels: one shared library of XLA FFI custom calls, built on first use.

`SOURCES` are the C++ files (`batched_matmul.cc`: Winograd's products across threads;
`group_norm.cc`: GroupNorm and swish in one pass over the statistics), each bound to XLA through
`ffi_call.h` (XLA's FFI C API alone). `prepare()` compiles them with the system's C++ compiler
(`$CXX`, else `c++`; `-O3 -march=native` against jaxlib's FFI C header) into `<cache>/native/`,
once per sources, jaxlib, compiler and CPU (about 1.5 s), loads the
library and registers every handler in `TARGETS` with XLA. Until it is ready (another platform,
`DDPM_JAX_NATIVE=0`, or no compiler: a warning says why), each op runs its XLA equivalent, which
gives the same results to float32 rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax

from .atomic import atomic_path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "batched_matmul.cc", HERE / "group_norm.cc")
HEADERS = (HERE / "ffi_call.h",)  # included by SOURCES
TARGETS = ("ddpm_jax_batched_matmul", "ddpm_jax_group_norm")
_lock = threading.Lock()
_ready: list[bool] = []  # [outcome of the first prepare()]


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
    """The C++ compiler that builds the kernels: $CXX, else c++ on the PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or "g++"


def library_path() -> Path:
    """Where the library built for these sources, jaxlib, compiler and CPU lives."""
    from .download import cache_dir

    parts = [s.read_bytes() for s in SOURCES + HEADERS]
    parts += [importlib.metadata.version("jaxlib").encode(), compiler().encode(), _cpu_identity().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()
    return cache_dir() / "native" / f"kernels-{key[:16]}.so"


def build(path: Path, march: str = "native") -> None:
    """Compile SOURCES for the CPU `march` names (-march) into the shared library `path` (written
    whole or not at all): each source to an object at once, then one link."""
    with tempfile.TemporaryDirectory() as work, atomic_path(path) as tmp:
        flags = ["-O3", f"-march={march}", "-std=c++17", "-fPIC", "-w", "-I", jax.ffi.include_dir()]
        objects = [Path(work) / f"{s.stem}.o" for s in SOURCES]
        compiles = [[compiler(), *flags, "-c", str(s), "-o", str(o)] for s, o in zip(SOURCES, objects)]
        running = [subprocess.Popen(c, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) for c in compiles]
        try:
            for cmd, proc in zip(compiles, running):
                stderr = proc.communicate(timeout=600)[1]
                _check(cmd, proc.returncode, stderr)
        finally:
            for proc in running:
                proc.kill()
                proc.wait()
        link = [compiler(), "-shared", *map(str, objects), "-o", str(tmp)]
        done = subprocess.run(link, capture_output=True, text=True, timeout=600)
        _check(link, done.returncode, done.stderr)


def _check(cmd: list[str], returncode: int, stderr: str) -> None:
    if returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr.strip()[-2000:]}")


def prepare() -> bool:
    """Build (if needed), load and register the kernels, once per process, where JAX's default
    backend is the CPU; whether they are ready. Where they cannot be, a warning says why and
    every op keeps XLA's equivalent."""
    with _lock:
        if not _ready:
            _ready.append(enabled() and jax.default_backend() == "cpu" and _load())
        return _ready[0]


def _load() -> bool:
    try:
        path = library_path()
        if not path.exists():
            log.info("building ddpm_jax's CPU kernels into %s", path)
            build(path)
        load(path)
        return True
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        log.warning(
            "ddpm_jax's CPU kernels are not available (%s); XLA runs Winograd's products and "
            "GroupNorm instead (slower at batch 1). Set CXX to a C++17 compiler, or "
            "DDPM_JAX_NATIVE=0 to leave them off without this warning.",
            e,
        )
        return False


def load(path: Path) -> None:
    """Register every handler of the library built at `path` with XLA (once per process)."""
    library = ctypes.CDLL(str(path))
    for target in TARGETS:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")


def ready() -> bool:
    """Whether `prepare()` has made the kernels ready in this process (it does not try)."""
    return bool(_ready and _ready[0])
