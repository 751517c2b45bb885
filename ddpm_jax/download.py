"""Fetch checkpoints into a local cache: streamed, md5-checked, atomic, locked.

The cache directory is `$DDPM_JAX_CACHE`, else `$XDG_CACHE_HOME/ddpm_jax`,
else `~/.cache/ddpm_jax`. A file is streamed into a temporary file beside its
destination, checked against its md5 and only then renamed into place, so a
cached file is either whole or absent; a file lock serialises processes that
fetch the same file at once. With `HF_HUB_OFFLINE=1` (or `DDPM_JAX_OFFLINE=1`)
nothing is fetched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from .atomic import atomic_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
OFFLINE_VARS = ("DDPM_JAX_OFFLINE", "HF_HUB_OFFLINE")


class _Md5Mismatch(Exception):
    """The bytes fetched are not the file expected."""


class DownloadError(FileNotFoundError):
    """A model file is not cached and could not be fetched."""


def cache_dir() -> Path:
    """Where downloads and converted params live (see the module docstring)."""
    if os.environ.get("DDPM_JAX_CACHE"):
        return Path(os.environ["DDPM_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ddpm_jax"


def offline() -> bool:
    """True when an offline variable is set to 1/true/yes/on (read at each call)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def md5sum(path, chunk: int = CHUNK) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stream(url: str, fileobj, timeout: float, desc: str) -> str:
    """Copy url's body into fileobj with a progress bar; returns its md5.

    Raises OSError (urllib's errors included) or HTTPException on a failed or
    short transfer.
    """
    h = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total is not None else None
        done = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
            while block := resp.read(CHUNK):
                fileobj.write(block)
                h.update(block)
                done += len(block)
                bar.update(len(block))
    if total is not None and done != total:
        raise OSError(f"transfer cut short: {done} of {total} bytes")
    return h.hexdigest()


def fetch(url: str, dest, md5: str, *, retries: int = 3, timeout: float = 60.0,
          backoff: float = 1.0) -> Path:
    """`dest` with the given md5, downloading it from `url` unless already cached.

    A cached file with the wrong md5 (truncated, corrupt) is fetched again.
    Failed or short transfers and md5 mismatches are retried `retries` times
    in all; then DownloadError says what to download and where to put it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    how = f"download {url} and save it as {dest} (md5 {md5})"
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():
            if md5sum(dest) == md5:
                return dest
            log.warning("%s is corrupt or incomplete (md5 mismatch); fetching it again", dest)
        if offline():
            raise DownloadError(
                f"{dest.name} is not cached and downloads are off ({' or '.join(OFFLINE_VARS)}=1): {how}"
            )
        reason = ""
        for attempt in range(1, retries + 1):
            try:
                with atomic_path(dest, suffix=".part") as tmp:
                    with open(tmp, "wb") as f:
                        got = _stream(url, f, timeout, dest.name)
                    if got != md5:
                        raise _Md5Mismatch(f"md5 {got} != expected {md5}")
                log.info("downloaded %s", dest)
                return dest
            except _Md5Mismatch as err:
                reason = str(err)
            except (OSError, HTTPException) as err:  # URLError, HTTPError, timeouts, IncompleteRead
                reason = f"{type(err).__name__}: {err}"
            log.warning("fetching %s failed (attempt %d of %d): %s", url, attempt, retries, reason)
            if attempt < retries:
                time.sleep(backoff * attempt)
        raise DownloadError(f"could not fetch {dest.name} ({reason}); {how}")
