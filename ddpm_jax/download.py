"""Fetch checkpoints into a local cache: streamed, bounded, md5-checked, atomic, locked.

The cache directory is `$DDPM_JAX_CACHE`, else `$XDG_CACHE_HOME/ddpm_jax`,
else `~/.cache/ddpm_jax`. A file is streamed into a temporary file beside its
destination, checked against its md5 and only then renamed into place, so a
cached file is either whole or absent; a file lock serialises processes that
fetch the same file at once (the one that waits says so), and the temporary
files of a killed download are removed by the next fetch of that file. With
`HF_HUB_OFFLINE=1` (or `DDPM_JAX_OFFLINE=1`) nothing is fetched.

Every download ends (`Limits`): an attempt fails when no byte arrives for
`stall` seconds (a server that accepts and never answers included) or when it
gets fewer than `min_rate` bytes/s over any `window` seconds; all attempts
together stop at `deadline` seconds: connecting, the status line and headers
included (a server that sends its headers a byte at a time is cut off then). A body larger than `max_bytes` (announced
or streamed), an HTTP 4xx answer (but 408/429), a full disk are not retried.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .atomic import atomic_path, remove_temporaries

log = logging.getLogger(__name__)

CHUNK = 1 << 20
OFFLINE_VARS = ("DDPM_JAX_OFFLINE", "HF_HUB_OFFLINE")
# The released checkpoints are 143 MB (cifar10) and 455 MB (lsun); a caller
# that knows its file passes a tighter bound.
DEFAULT_MAX_BYTES = 1 << 30
HUB_TIMEOUT = 10.0


@dataclass(frozen=True)
class Limits:
    """Bounds on one `fetch`: seconds, and bytes per second."""

    deadline: float = 7200.0  # all attempts together, from the first request
    stall: float = 30.0  # without a byte (or an answer) ends an attempt
    min_rate: float = 32 * 1024  # averaged over each `window` ...
    window: float = 30.0  # ... seconds; slower ends an attempt


class _Md5Mismatch(Exception):
    """The bytes fetched are not the file expected."""


class _Retry(Exception):
    """A transient failure: the attempt may be repeated."""


class _Fatal(Exception):
    """A failure that repeating cannot fix (4xx, too large, disk full, deadline)."""


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


class _Deadline:
    """Ends every connection opened through it at `stop_at` (time.monotonic): its
    socket is shut down then, whether it is connecting, reading the status line
    and headers, or the body. A socket timeout alone cannot do this: a server
    that sends a byte every half second never lets one expire."""

    def __init__(self, stop_at: float):
        self.stop_at, self.timers = stop_at, []

    def watch(self, sock) -> None:
        def cut():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed already
                pass

        timer = threading.Timer(max(0.0, self.stop_at - time.monotonic()), cut)
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()

    def connection(self, base: type):
        """`base` (HTTPConnection or HTTPSConnection) whose connect is bounded by the
        time left and whose socket is watched from then on."""
        deadline = self

        class Bounded(base):
            def connect(self):
                left = deadline.stop_at - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the deadline passed before connecting")
                self.timeout = left if self.timeout is None else min(self.timeout, left)
                super().connect()
                deadline.watch(self.sock)

        return Bounded

    def opener(self) -> urllib.request.OpenerDirector:
        deadline = self

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(deadline.connection(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(deadline.connection(http.client.HTTPSConnection), req)

        return urllib.request.build_opener(HTTP, HTTPS)


def _open(url: str, stall: float, deadline: _Deadline):
    """urlopen within the deadline, with HTTP errors sorted into retryable and not."""
    try:
        return deadline.opener().open(url, timeout=stall)
    except urllib.error.HTTPError as err:
        why = f"HTTP {err.code} {err.reason}"
        if 400 <= err.code < 500 and err.code not in (408, 429):  # the request itself is wrong
            raise _Fatal(why) from None
        raise _Retry(why) from None


def _stream(url: str, fileobj, max_bytes: int, limits: Limits, stop_at: float, desc: str) -> str:
    """Copy url's body into fileobj within the limits, with a progress bar; returns its md5.

    Raises _Fatal, _Retry, or OSError/HTTPException for a failed transfer
    (urllib's errors and socket timeouts included).
    """
    h = hashlib.md5()
    deadline = _Deadline(stop_at)
    try:
        return _copy(_open(url, limits.stall, deadline), fileobj, max_bytes, limits, stop_at, desc, h)
    except (OSError, HTTPException) as err:
        if time.monotonic() >= stop_at:
            raise _Fatal(f"not done within the deadline of {limits.deadline:g} s ({type(err).__name__})") from err
        raise
    finally:
        deadline.cancel()


def _copy(resp, fileobj, max_bytes: int, limits: Limits, stop_at: float, desc: str, h) -> str:
    """The body of `resp` into fileobj (see `_stream`); returns its md5."""
    with resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total is not None and total.strip().isdigit() else None
        if total is not None and total > max_bytes:
            raise _Fatal(f"the server announces {total} bytes; this file is at most {max_bytes}")
        if total is not None:
            st = os.fstatvfs(fileobj.fileno())
            if total > st.f_bavail * st.f_frsize:
                raise _Fatal(f"{total} bytes do not fit in the {st.f_bavail * st.f_frsize} bytes free there")
        done, window_start, window_bytes = 0, time.monotonic(), 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
            while block := resp.read1(CHUNK):  # read1: one recv, so the clock is read often
                done += len(block)
                if done > max_bytes:
                    raise _Fatal(f"the body goes on past {max_bytes} bytes, the most this file can be")
                try:
                    fileobj.write(block)
                    fileobj.flush()  # so that a full disk fails here, not at close
                except OSError as err:  # a full disk, a lost mount: no retry helps
                    raise _Fatal(f"cannot write the download: {err}") from err
                h.update(block)
                bar.update(len(block))
                now = time.monotonic()
                if now > stop_at:
                    raise _Fatal(f"not done within the deadline of {limits.deadline:g} s ({done} bytes so far)")
                window_bytes += len(block)
                if now - window_start >= limits.window:
                    rate = window_bytes / (now - window_start)
                    if rate < limits.min_rate:
                        raise _Retry(
                            f"too slow: {rate:.0f} bytes/s over {now - window_start:.0f} s, "
                            f"below the minimum {limits.min_rate:.0f}"
                        )
                    window_start, window_bytes = now, 0
    if total is not None and done != total:
        raise OSError(f"transfer cut short: {done} of {total} bytes")
    return h.hexdigest()


def _locked(lock: FileLock, dest: Path, wait: float):
    """Acquire `lock`, saying so when another process holds it; DownloadError after `wait` s."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        log.warning(
            "another process is fetching %s; waiting for it to finish (at most %.0f s; lock %s)",
            dest.name,
            wait,
            lock.lock_file,
        )
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise DownloadError(
            f"another process has been fetching {dest.name} for over {wait:.0f} s (lock {lock.lock_file}); "
            "try again later"
        ) from None


def fetch(
    url: str,
    dest,
    md5: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    limits: Limits = Limits(),
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """`dest` with the given md5, downloading it from `url` unless already cached.

    A cached file with the wrong md5 (truncated, corrupt) is fetched again.
    Transient failures (network errors, 5xx, stalls, too slow, short
    transfers, md5 mismatches) are retried `retries` times in all, within
    `limits.deadline`; the others fail at once. Then DownloadError says what
    to download and where to put it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    how = f"download {url} and save it as {dest} (md5 {md5})"
    lock = FileLock(str(dest) + ".lock")
    _locked(lock, dest, limits.deadline + 2 * limits.stall)
    try:
        remove_temporaries(dest.parent, glob.escape(dest.name), ".part")
        if dest.is_file():
            if md5sum(dest) == md5:
                return dest
            log.warning("%s is corrupt or incomplete (md5 mismatch); fetching it again", dest)
        if offline():
            raise DownloadError(
                f"{dest.name} is not cached and downloads are off ({' or '.join(OFFLINE_VARS)}=1): {how}"
            )
        stop_at = time.monotonic() + limits.deadline
        reason = ""
        for attempt in range(1, retries + 1):
            try:
                with atomic_path(dest, suffix=".part") as tmp:
                    with open(tmp, "wb") as f:
                        got = _stream(url, f, max_bytes, limits, stop_at, dest.name)
                    if got != md5:
                        raise _Md5Mismatch(f"md5 {got} != expected {md5}")
                log.info("downloaded %s", dest)
                return dest
            except _Fatal as err:
                raise DownloadError(f"could not fetch {dest.name} ({err}); {how}") from None
            except (_Md5Mismatch, _Retry) as err:
                reason = str(err)
            except (OSError, HTTPException) as err:  # URLError, timeouts, IncompleteRead
                reason = f"{type(err).__name__}: {err}"
            log.warning("fetching %s failed (attempt %d of %d): %s", url, attempt, retries, reason)
            if attempt < retries:
                pause = backoff * attempt
                if time.monotonic() + pause >= stop_at:
                    reason += f"; out of time (deadline {limits.deadline:g} s)"
                    break
                time.sleep(pause)
        raise DownloadError(f"could not fetch {dest.name} ({reason}); {how}")
    finally:
        lock.release()


def hub_answers(endpoint: str | None = None, timeout: float = HUB_TIMEOUT) -> bool:
    """Whether the Hugging Face Hub (`HF_ENDPOINT`, huggingface.co by default)
    answers an HTTP request within `timeout` seconds; any status counts.

    Ask before `hf_hub_download` and pass `local_files_only=True` when it is
    False: huggingface_hub retries a metadata request that timed out (five
    times, 60 s each, not configurable by its `HF_HUB_ETAG_TIMEOUT`), so an
    endpoint that accepts connections and never answers costs minutes per file.
    """
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, HTTPException) as err:
        log.warning(
            "the Hugging Face Hub at %s did not answer within %g s (%s); using only its cache", endpoint, timeout, err
        )
        return False
