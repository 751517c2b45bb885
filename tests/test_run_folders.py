"""Nothing a user already has is replaced, and a run folder has one writer at a time:
`inpaint` and `interpolate` refuse files that exist, `train` and `sample` hold their folder's
lock (pid and host) for their whole run, and a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys

import pytest

from ddpm_jax import config
from ddpm_jax.cli import main
from ddpm_jax.folder_lock import LOCK_NAME, folder_lock

from .helpers import ONE_LEVEL_UNET, TINY_DIFFUSION, inpaint_inputs


@pytest.fixture
def live_process():
    """Another live process on this host (its pid stands in for a running run)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _lock_held_by(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "since": "2026-12-03 08:00:00", "what": "sample run"}
    (folder / LOCK_NAME).write_text(json.dumps(record))


def test_a_live_holder_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path, live_process, caplog):
    _lock_held_by(tmp_path, live_process)
    with pytest.raises(ValueError, match=rf"in use by another sample run: process {live_process} on .* since "):
        with folder_lock(tmp_path):
            pass
    _lock_held_by(tmp_path, live_process, host="elsewhere")  # a host we cannot check: refused too
    with pytest.raises(ValueError, match=f"process {live_process} on elsewhere"):
        with folder_lock(tmp_path):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lock_held_by(tmp_path, int(dead.stdout))
    with caplog.at_level(logging.WARNING, logger="ddpm_jax.folder_lock"), folder_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] != int(dead.stdout)
    assert "taking over the lock" in caplog.text and "which is gone" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()  # released


def test_a_second_sample_run_into_a_folder_in_use_is_refused(saved, tmp_path, live_process, capsys):
    out = tmp_path / "out"
    _lock_held_by(out, live_process)
    assert main(["sample", "--model", str(saved), "--n", "2", "--out", str(out)]) == 2
    assert f"process {live_process}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written beside it


def test_a_second_training_run_into_a_folder_in_use_is_refused(tmp_path, live_process, monkeypatch, capsys):
    monkeypatch.setitem(config.UNET_PRESETS, "mini", ONE_LEVEL_UNET)
    monkeypatch.setitem(config.DIFFUSION_PRESETS, "mini", TINY_DIFFUSION)
    out = tmp_path / "run"
    _lock_held_by(out, live_process)
    args = ["train", "--data", "digits", "--config", "mini", "--steps", "2", "--batch", "8", "--out", str(out)]
    assert main(args) == 2
    assert f"in use by another sample run: process {live_process}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # no checkpoint, no log


def test_inpaint_and_interpolate_replace_no_file(saved, tmp_path, capsys):
    picture, mask = inpaint_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "001.png"
    mine.write_bytes(b"a picture of the user's")
    args = ["inpaint", "--model", str(saved), "--image", picture, "--mask", mask, "--n", "2", "--out", str(out)]
    assert main([*args, "--steps", "2", "--jump-n-sample", "1"]) == 2
    assert f"{mine} already exist(s)" in capsys.readouterr().err
    assert mine.read_bytes() == b"a picture of the user's" and sorted(p.name for p in out.iterdir()) == ["001.png"]
    strip = tmp_path / "strip.png"
    strip.write_bytes(b"the user's strip")
    assert main(["interpolate", "--model", str(saved), "--k", "2", "--out", str(strip)]) == 2
    assert f"{strip} already exist(s)" in capsys.readouterr().err
    assert strip.read_bytes() == b"the user's strip"
