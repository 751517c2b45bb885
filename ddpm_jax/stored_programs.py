"""Traced programs kept on disk (`jax.export`), so that a new process does not trace them again.

JAX's persistent compilation cache (`compile_cache.py`) skips XLA's compile, but its key is a hash
of the lowered program: every process still traces the UNet through Flax and lowers it, 2 s of a
cifar10 model's first picture on this project's CPU, to find the compiled program it already has.
A `StoredJit` exports a jitted function the first time it meets a kind of arguments and writes the
serialized program under a key naming everything that shapes it: ddpm_jax's source, jax's version
and backend, the caller's fingerprint (the model's configs, ops, precision), the static arguments,
the arguments' tree, shapes and dtypes. A later process reads it (milliseconds) and hands it to XLA,
whose compilation cache then hits. Programs live beside the compilation cache and only while it is
on: `enable_compilation_cache` (every `ddpm-jax` command and the demo) turns both on. `stored_json`
keeps other traced results the same way (the UNet's param shapes, which loading a model checks).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
from collections import OrderedDict
from pathlib import Path

import jax

from . import native
from .atomic import atomic_path

log = logging.getLogger(__name__)

SUFFIX = ".jaxexport"
# Programs held in this process (each a compiled executable), least recently used dropped first.
KEPT = 64
_PROGRAMS: OrderedDict[tuple, object] = OrderedDict()


class NotStorable(Exception):
    """A static argument whose meaning the key cannot name (code from outside ddpm_jax)."""


def folder() -> Path | None:
    """Where programs are kept: beside JAX's persistent compilation cache; None when it is off."""
    cache = jax.config.jax_compilation_cache_dir
    return None if not cache else Path(cache).parent / f"{Path(cache).name}-exported"


@functools.cache
def source_hash() -> str:
    """sha256 of ddpm_jax's source (Python and C++): any change to the code makes new keys."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.cc")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def static_key(value) -> str:
    """A static argument as text that names what it does: plain values by repr, a function by its
    module and name (only ddpm_jax's own, whose source the key covers), a dataclass by its fields."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if callable(value) and hasattr(value, "__qualname__"):
        if not value.__module__.startswith("ddpm_jax."):
            raise NotStorable(f"{value.__module__}.{value.__qualname__}")
        return f"{value.__module__}.{value.__qualname__}"
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is None:
        raise NotStorable(type(value).__name__)
    return f"{type(value).__name__}(" + ",".join(f"{k}={static_key(getattr(value, k))}" for k in fields) + ")"


def stored_json(name: str, fingerprint: str, compute):
    """`compute()`'s JSON-able value, kept on disk beside the programs under a key of ddpm_jax's
    source, jax's version, `name` and `fingerprint`: a value that costs a trace (the UNet's param
    shapes) is read back by the next process. Without a folder (the cache off) it is computed."""
    where = folder()
    if where is None:
        return compute()
    key = hashlib.sha256("\n".join([source_hash(), jax.__version__, name, fingerprint]).encode()).hexdigest()
    path = where / f"{name}-{key[:32]}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read (%s); computing it again", path, e)
    value = compute()
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(value))
    except OSError as e:
        log.warning("cannot keep %s in %s (%s); the next process computes it again", name, path, e)
    return value


class StoredJit:
    """`jitted` (a `jax.jit` with static keyword arguments) called through programs kept on disk.

    Where the compilation cache is off, or a static argument comes from code outside ddpm_jax,
    it calls `jitted` itself. `_cache_size()` counts the programs this object has used, as a
    jitted function's does, so a test can check that nothing is traced twice.
    """

    def __init__(self, jitted, name: str, fingerprint: str):
        self._jitted, self._name, self._fingerprint = jitted, name, fingerprint
        self._used: set[str] = set()  # keys of the stored programs called
        self._direct = False  # whether `jitted` itself was called

    def _cache_size(self) -> int:
        return len(self._used) + (self._jitted._cache_size() if self._direct else 0)

    def __call__(self, *args, **static):
        where = folder()
        try:
            statics = ",".join(f"{k}={static_key(v)}" for k, v in sorted(static.items()))
        except NotStorable:
            where = None
        if where is None:
            self._direct = True
            return self._jitted(*args, **static)
        leaves, tree = jax.tree.flatten(args)
        key = hashlib.sha256(
            "\n".join(
                [
                    source_hash(),
                    jax.__version__,
                    importlib.metadata.version("jaxlib"),
                    jax.default_backend(),
                    f"native={native.ready()}",
                    self._name,
                    self._fingerprint,
                    statics,
                    str(tree),
                    ",".join(str(jax.typeof(leaf)) for leaf in leaves),
                ]
            ).encode()
        ).hexdigest()
        self._used.add(key)
        # The program runs on the arguments' device, named: left unspecified, arguments committed
        # to it (a chunk's output, the next chunk's x) lower a second program beside uncommitted
        # ones (x_T), and XLA compiled the chunk twice in one chain.
        device = next((d for leaf in leaves if isinstance(leaf, jax.Array) for d in leaf.devices()), jax.devices()[0])
        held = (key, device)
        if held not in _PROGRAMS:
            one = jax.sharding.SingleDeviceSharding(device)
            _PROGRAMS[held] = jax.jit(
                self._exported(where / f"{self._name}-{key[:32]}{SUFFIX}", tree, leaves, static).call,
                in_shardings=one,
                out_shardings=one,
            )
            if len(_PROGRAMS) > KEPT:
                _PROGRAMS.popitem(last=False)
        _PROGRAMS.move_to_end(held)
        return _PROGRAMS[held](*leaves)

    def _exported(self, path: Path, tree, leaves, static) -> jax.export.Exported:
        """The program at `path`, or exported now and written there (a damaged file is replaced)."""
        if path.exists():
            try:
                return jax.export.deserialize(bytearray(path.read_bytes()))
            except Exception as e:  # noqa: BLE001 (any damage: export it again)
                log.warning("%s cannot be read (%s); exporting it again", path, e)

        def flat(*leaves):
            return self._jitted(*jax.tree.unflatten(tree, leaves), **static)

        # The CPU kernels are ddpm_jax's own custom calls, registered before a key names them.
        safe = [jax.export.DisabledSafetyCheck.custom_call(t) for t in native.TARGETS]
        exported = jax.export.export(jax.jit(flat), disabled_checks=safe)(*leaves)  # shapes and dtypes
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(exported.serialize())
        except OSError as e:
            log.warning("cannot keep the traced program in %s (%s); the next process traces it again", path, e)
        return exported
