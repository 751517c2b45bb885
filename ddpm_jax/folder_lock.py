"""One writer per run folder: a lock file holding the writer's pid and host.

A training run or a sample run holds its folder's lock for its whole life,
so a second run into the same folder is refused at once, naming the holder,
instead of pruning the first run's checkpoints or writing between its files.
A lock left by a process that is gone (killed, say) on this host is taken
over, and the log says so. The lock file is created with O_EXCL, so two runs
that start together cannot both get it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_NAME = ".ddpm_jax.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, or None when it cannot be read (a torn write counts as stale)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def folder_lock(folder, what: str = "run"):
    """Hold `folder`'s lock (the folder must exist) while the block runs.

    ValueError names the holder (pid, host, since when) when another live
    process holds it, or a process on another host (whose liveness cannot be
    checked from here: remove the lock file by hand if it is gone).
    """
    path = Path(folder) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "what": what}
    while not _create(path, me):
        held = _holder(path)
        if held is not None and (held.get("host") != me["host"] or _alive(held["pid"])):
            raise ValueError(
                f"{folder} is in use by another {held.get('what', 'run')}: process {held['pid']} on "
                f"{held.get('host')} since {held.get('since')} holds {path}; wait for it to end or choose "
                "another --out (if that process is gone, delete the lock file)"
            )
        stale = f"process {held['pid']} on {held.get('host')}, which is gone" if held else "an unreadable record"
        log.warning("taking over the lock %s, left by %s", path, stale)
        path.unlink(missing_ok=True)
    try:
        yield path
    finally:
        if _holder(path) == me:
            path.unlink(missing_ok=True)
