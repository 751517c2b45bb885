"""Downloads against a loopback HTTP server the tests run: md5, retries, truncation,
a corrupt cache, two processes at once, offline. Nothing here touches the internet."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddpm_jax.download import DownloadError, Limits, cache_dir, fetch

from .helpers import CheckpointServer

PAYLOAD = random.Random(0).randbytes(300_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    s = CheckpointServer({"/model.ckpt": PAYLOAD})
    yield s
    s.close()


pytestmark = pytest.mark.usefixtures("online")


def leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def test_good_download(server, tmp_path):
    dest = tmp_path / "m" / "model-1.ckpt"
    assert fetch(server.url("/model.ckpt"), dest, MD5) == dest
    assert dest.read_bytes() == PAYLOAD and server.requests["/model.ckpt"] == 1
    fetch(server.url("/model.ckpt"), dest, MD5)  # cached: no second request
    assert server.requests["/model.ckpt"] == 1 and not leftovers(dest.parent)


def test_md5_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "model.ckpt"
    server.plan["/model.ckpt"] = ["corrupt"] * 3
    with pytest.raises(DownloadError, match=r"md5 [0-9a-f]{32} != expected " + MD5) as err:
        fetch(server.url("/model.ckpt"), dest, MD5, backoff=0)
    assert f"save it as {dest}" in str(err.value) and server.url("/model.ckpt") in str(err.value)
    assert not dest.exists() and not leftovers(tmp_path) and server.requests["/model.ckpt"] == 3


def test_truncated_transfer_is_retried(server, tmp_path):
    dest = tmp_path / "model.ckpt"
    server.plan["/model.ckpt"] = ["truncate"]
    fetch(server.url("/model.ckpt"), dest, MD5, backoff=0)
    assert dest.read_bytes() == PAYLOAD and server.requests["/model.ckpt"] == 2


def test_always_truncated_fails_clearly(server, tmp_path):
    dest = tmp_path / "model.ckpt"
    server.plan["/model.ckpt"] = ["truncate"] * 3
    with pytest.raises(DownloadError, match="could not fetch model.ckpt"):
        fetch(server.url("/model.ckpt"), dest, MD5, backoff=0)
    assert not dest.exists() and not leftovers(tmp_path)


def test_server_that_fails_once(server, tmp_path):
    dest = tmp_path / "model.ckpt"
    server.plan["/model.ckpt"] = ["500"]
    fetch(server.url("/model.ckpt"), dest, MD5, backoff=0)
    assert dest.read_bytes() == PAYLOAD and server.requests["/model.ckpt"] == 2


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_cache_file_is_fetched_again(server, tmp_path, damage):
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(PAYLOAD[:1000] if damage == "truncated" else PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))
    fetch(server.url("/model.ckpt"), dest, MD5)
    assert dest.read_bytes() == PAYLOAD and server.requests["/model.ckpt"] == 1


_FETCH_WHEN_TOLD = """
import sys, time
from pathlib import Path
from ddpm_jax.download import fetch
url, dest, md5, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
fetch(url, dest, md5)
"""


def test_two_processes_fetching_at_once(server, tmp_path):
    dest = tmp_path / "cache" / "model.ckpt"
    server.plan["/model.ckpt"] = ["slow", "slow"]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _FETCH_WHEN_TOLD,
                server.url("/model.ckpt"),
                str(dest),
                MD5,
                str(tmp_path / f"ready{i}"),
                str(go),
            ]
        )
        for i in range(2)
    ]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.05)
    go.touch()  # both call fetch now; the transfer takes ~0.5 s, so they overlap
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert dest.read_bytes() == PAYLOAD
    assert server.requests["/model.ckpt"] == 1  # the second waited on the lock, then found the file
    assert not leftovers(dest.parent)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "DDPM_JAX_OFFLINE"])
def test_offline_and_not_cached_says_what_to_download_and_where(server, tmp_path, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    dest = tmp_path / "diffusion_cifar10_model" / "model-790000.ckpt"
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/model.ckpt"), dest, MD5)
    msg = str(err.value)
    assert "not cached and downloads are off" in msg
    assert f"download {server.url('/model.ckpt')} and save it as {dest} (md5 {MD5})" in msg
    assert server.requests["/model.ckpt"] == 0


def test_offline_with_the_file_cached_works(server, tmp_path, monkeypatch):
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(PAYLOAD)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch(server.url("/model.ckpt"), dest, MD5) == dest


def test_no_network_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.ckpt"
    with pytest.raises(DownloadError, match=rf"could not fetch model.ckpt \(URLError.*download {url} and save it"):
        fetch(url, tmp_path / "model.ckpt", MD5, retries=2, backoff=0, limits=Limits(stall=5))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DDPM_JAX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "ddpm_jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ddpm_jax"
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
