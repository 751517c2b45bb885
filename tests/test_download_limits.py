"""Every download ends, within bounds, against a loopback
server that drips, stalls, streams without end, announces too much or says 404;
a process waiting for another's download says so; the Hub probe gives up fast.
Nothing here touches the internet."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import threading
import time

import pytest
from filelock import FileLock

from ddpm_jax.download import DownloadError, Limits, fetch, hub_answers

from .helpers import CheckpointServer

PAYLOAD = random.Random(1).randbytes(200_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()
# Small limits so that each case ends in about a second.
QUICK = Limits(deadline=20.0, stall=1.0, min_rate=2000.0, window=0.5)


pytestmark = pytest.mark.usefixtures("online")


@pytest.fixture
def server():
    """/m.ckpt, and / for the Hub probe; a drip is a byte every 0.2 s."""
    s = CheckpointServer({"/m.ckpt": PAYLOAD, "/": b""}, drip_interval=0.2)
    yield s
    s.close()


def left_behind(folder):
    """Files a download may leave: its temporaries (the lock file is by design)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def timed(fn):
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fn()
    return str(err.value), time.monotonic() - start


def lock_is_free(dest) -> bool:
    lock = FileLock(str(dest) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Exception:
        return False
    lock.release()
    return True


def test_a_server_that_drips_is_dropped_for_its_rate(server, tmp_path):
    dest = tmp_path / "m.ckpt"
    server.plan["/m.ckpt"] = ["drip"] * 2
    msg, took = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, limits=QUICK, retries=2, backoff=0))
    assert "too slow" in msg and "below the minimum 2000" in msg and f"save it as {dest}" in msg
    # Two attempts, each dropped after its first full window (0.5 s) of ~5 bytes/s.
    assert took < 5, took
    assert server.requests["/m.ckpt"] == 2 and left_behind(tmp_path) == [] and lock_is_free(dest)


def test_a_server_that_accepts_and_never_answers_times_out(server, tmp_path):
    dest = tmp_path / "m.ckpt"
    server.plan["/m.ckpt"] = ["stall"] * 2
    msg, took = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, limits=QUICK, retries=2, backoff=0))
    assert "timed out" in msg, msg
    assert took < 5, took  # two attempts of stall = 1 s each
    assert left_behind(tmp_path) == [] and lock_is_free(dest)


def test_an_endless_body_stops_at_the_size_limit_and_is_not_retried(server, tmp_path):
    dest = tmp_path / "m.ckpt"
    server.plan["/m.ckpt"] = ["endless"] * 3
    msg, _ = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, max_bytes=3 << 20, limits=QUICK, backoff=0))
    assert f"goes on past {3 << 20} bytes" in msg
    assert server.requests["/m.ckpt"] == 1  # one attempt: the disk is filled at most once, up to the limit
    assert left_behind(tmp_path) == []


def test_an_announced_body_over_the_limit_is_refused_before_reading(server, tmp_path):
    dest = tmp_path / "m.ckpt"
    server.plan["/m.ckpt"] = ["huge"] * 3
    msg, took = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, limits=QUICK, backoff=0))
    assert f"announces {10**12} bytes; this file is at most {1 << 30}" in msg
    assert server.requests["/m.ckpt"] == 1 and took < 3 and left_behind(tmp_path) == []
    # The real file, with a limit it fits in, goes through.
    server.plan["/m.ckpt"] = []
    assert fetch(server.url("/m.ckpt"), dest, MD5, max_bytes=len(PAYLOAD)).read_bytes() == PAYLOAD


@pytest.mark.parametrize("status, attempts", [("404", 1), ("500", 3)])
def test_4xx_is_not_retried_5xx_is(server, tmp_path, status, attempts):
    dest = tmp_path / "m.ckpt"
    server.plan["/m.ckpt"] = [status] * 3
    msg, _ = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, limits=QUICK, backoff=0))
    assert f"HTTP {status}" in msg
    assert server.requests["/m.ckpt"] == attempts and left_behind(tmp_path) == []


def test_the_deadline_covers_the_whole_download(server, tmp_path):
    dest = tmp_path / "m.ckpt"
    server.plan["/m.ckpt"] = ["slow"]  # 0.5 s of transfer, fast enough for the rate
    limits = Limits(deadline=0.2, stall=1.0, min_rate=1.0, window=10.0)
    msg, took = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, limits=limits, backoff=0))
    assert "not done within the deadline of 0.2 s" in msg and took < 2
    assert server.requests["/m.ckpt"] == 1 and left_behind(tmp_path) == []


@pytest.fixture
def header_drip():
    """A loopback server that sends its status line and headers one byte every 0.2 s, forever
    (until the test ends): no socket timeout of a second ever expires on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n" + b"X-Slow: " + b"a" * 10_000

    def serve():
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                for byte in head:
                    if done.wait(0.2):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/m.ckpt"
    done.set()
    thread.join(timeout=5)
    listener.close()


def test_the_deadline_covers_the_status_line_and_headers(header_drip, tmp_path):
    limits = Limits(deadline=2.0, stall=1.0, min_rate=2000.0, window=0.5)
    msg, took = timed(lambda: fetch(header_drip, tmp_path / "m.ckpt", MD5, limits=limits, backoff=0))
    assert "not done within the deadline of 2 s" in msg and took < 4, (msg, took)
    assert left_behind(tmp_path) == []


def test_waiting_for_another_process_says_so_and_is_bounded(server, tmp_path, caplog):
    dest = tmp_path / "m.ckpt"
    held = FileLock(str(dest) + ".lock")
    held.acquire()  # another "process" (another file descriptor) is downloading
    try:
        with caplog.at_level(logging.WARNING, logger="ddpm_jax.download"):
            msg, took = timed(lambda: fetch(server.url("/m.ckpt"), dest, MD5, limits=Limits(deadline=0.5, stall=0.25)))
    finally:
        held.release()
    assert "another process is fetching m.ckpt; waiting for it" in caplog.text
    assert "another process has been fetching m.ckpt for over 1 s" in msg and took < 3
    assert server.requests["/m.ckpt"] == 0


def test_the_waiter_goes_on_when_the_other_process_is_done(server, tmp_path, caplog):
    dest = tmp_path / "m.ckpt"
    held = FileLock(str(dest) + ".lock", thread_local=False)  # released by the timer's thread
    held.acquire()
    threading.Timer(0.5, held.release).start()
    with caplog.at_level(logging.WARNING, logger="ddpm_jax.download"):
        assert fetch(server.url("/m.ckpt"), dest, MD5, limits=QUICK).read_bytes() == PAYLOAD
    assert "waiting for it" in caplog.text


def test_hub_probe_gives_up_on_an_endpoint_that_never_answers(server, caplog):
    server.plan["/"] = ["stall"]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ddpm_jax.download"):
        assert hub_answers(server.url("/"), timeout=1.0) is False
    assert time.monotonic() - start < 3
    assert "did not answer within 1 s" in caplog.text and "using only its cache" in caplog.text
    assert hub_answers(server.url("/")) is True  # answering, any status: reachable
    server.plan["/"] = ["404"]
    assert hub_answers(server.url("/")) is True
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    assert hub_answers(closed, timeout=1.0) is False


def test_a_full_disk_is_not_retried(server, tmp_path, monkeypatch):
    import builtins

    import ddpm_jax.download as download

    # The download's writes go to /dev/full, which answers every write with ENOSPC.
    monkeypatch.setattr(download, "open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    msg, _ = timed(lambda: fetch(server.url("/m.ckpt"), tmp_path / "m.ckpt", MD5, limits=QUICK, backoff=0))
    assert "cannot write the download: [Errno 28] No space left on device" in msg
    assert server.requests["/m.ckpt"] == 1 and left_behind(tmp_path) == []
