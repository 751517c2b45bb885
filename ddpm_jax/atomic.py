"""The one writer: every file the project writes appears whole or not at all.

A file is written to a temporary name beside its target, synced, and renamed
over it (`os.replace`, atomic on POSIX), so a killed process leaves either the
old file or the new one, never a torn file under the real name. What a killed
process does leave is its temporary file, `.<name>.<random><suffix>`: the
next run that owns the folder removes them with `remove_temporaries`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is
    synced, made world-readable (0644) and renamed over `path`. On any error
    it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def remove_temporaries(folder, name: str = "*", suffix: str = ".tmp") -> list[Path]:
    """Delete the temporary files `atomic_path` left in `folder` for targets
    matching the glob `name` (a killed writer's); returns what was removed.

    Call it only while no other process writes those targets (under their
    lock, or in a folder this run owns).
    """
    removed = []
    for tmp in Path(folder).glob(f".{name}.*{suffix}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) a killed run left in %s", len(removed), folder)
    return removed


def write_with(path, write: Callable[[BinaryIO], object]) -> Path:
    """Create `path` atomically from `write(fileobj)` (e.g. a PIL or numpy save)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return path


def write_bytes(path, data: bytes) -> Path:
    return write_with(path, lambda f: f.write(data))


def write_json(path, obj, **kwargs) -> Path:
    """`obj` as JSON (indent 1 unless told otherwise), atomically."""
    kwargs.setdefault("indent", 1)
    return write_bytes(path, (json.dumps(obj, **kwargs) + "\n").encode())


def refuse_existing(paths, flag: str = "--out") -> None:
    """ValueError naming the files of `paths` that exist already: a command that
    would write them replaces nothing a user has (checked before any work)."""
    there = [str(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if there:
        shown = ", ".join(there[:3]) + (f" and {len(there) - 3} more" if len(there) > 3 else "")
        raise ValueError(f"{flag}: {shown} already exist(s); move them away or choose another {flag}")
