"""Every expected CLI error is one line on stderr and exit
code 2, checked before a model is loaded where it can be; tracebacks are for
bugs (and for everything with DDPM_JAX_DEBUG=1); error texts name the real cause."""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import subprocess
import sys

import pytest

from ddpm_jax import cli
from ddpm_jax.cli import main, sample
from ddpm_jax.cli.common import check_out_dir
from ddpm_jax.convert.safe_load import load_state_dict


def run_sample(capsys, *args) -> tuple[int, str]:
    code = main(["sample", *args])
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ddpm-jax sample: error: ") or err.startswith("ddpm-jax convert: error: "), err
    return err


@pytest.mark.parametrize(
    "make_out, says",
    [
        (lambda d: (d / "f.png").write_bytes(b"x") and d / "f.png", "f.png is a file, not a folder"),
        (lambda d: (d / "f").write_bytes(b"x") and d / "f" / "sub" / "dir", "f is a file, not a folder"),
    ],
)
def test_out_that_cannot_be_a_folder_fails_before_loading_a_model(tmp_path, capsys, make_out, says):
    out = make_out(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    # A model that does not exist: the --out error comes first, so nothing was loaded.
    code, err = run_sample(capsys, "--model", "no_such_model", "--out", str(out))
    assert code == 2 and says in one_line(err) and f"--out {out}" in err
    assert sorted(tmp_path.rglob("*")) == before


def test_out_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    # Tests may run as root, which writes through any permission bits, and
    # cannot mount a read-only file system: the OS's answers are stood in for.
    real_access, real_statvfs = os.access, os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly() if str(p) == str(tmp_path) else real_statvfs(p))
    with pytest.raises(ValueError, match=f"cannot write there, {tmp_path} is on a read-only file system"):
        check_out_dir(tmp_path / "new" / "out")
    code, err = run_sample(capsys, "--model", "no_such_model", "--out", str(tmp_path / "out"))
    assert code == 2 and "read-only file system" in one_line(err)


def test_a_write_that_fails_on_the_disk_is_a_message(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "manifest.json"))

    monkeypatch.setattr("ddpm_jax.atomic.write_json", full_disk)
    code, err = run_sample(capsys, "--out", str(tmp_path / "out"), "--n", "1", "--steps", "1")
    assert code == 2 and "[Errno 28] No space left on device" in one_line(err)
    assert not any((tmp_path / "out").glob("*.png"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is empty (0 bytes): not a PyTorch checkpoint"),
        (b"\x13" + random.Random(0).randbytes(4096), "is not a PyTorch checkpoint: neither a zip"),
        (b"hello, I am text\n", "is not a PyTorch checkpoint"),
        (b"\x80\x02\x8a\x0a", "is not a readable PyTorch checkpoint: a damaged or truncated pickle"),
        (pickle.dumps({"a": 1}, protocol=4), "is not a plain tensor checkpoint"),
    ],
)
def test_checkpoint_errors_name_the_real_cause(tmp_path, capsys, content, says):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(says)) as err:
        load_state_dict(path)
    assert "could run code" not in str(err.value)
    code, err = run_sample(capsys, "--model", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and says in one_line(err)
    assert not (tmp_path / "out").exists()


def test_a_pickle_that_would_run_code_keeps_its_message(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Payload()}, protocol=2))
    with pytest.raises(ValueError, match=r"could run code \(it imports posix.mkdir"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_and_folder_models_are_messages(tmp_path, capsys):
    code, err = run_sample(capsys, "--model", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown model" in one_line(err)
    (tmp_path / "dir.safetensors").mkdir()
    code, err = run_sample(capsys, "--model", str(tmp_path / "dir.safetensors"), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a diffusers model folder" in one_line(err)


def test_bugs_keep_their_traceback_and_debug_shows_every_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_JAX_DEBUG", "1")
    with pytest.raises(ValueError, match="seed=-1"):
        main(["sample", "--seed", "-1", "--out", str(tmp_path)])
    monkeypatch.setenv("DDPM_JAX_DEBUG", "0")
    assert main(["sample", "--seed", "-1", "--out", str(tmp_path)]) == 2

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sample, "run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["sample", "--out", str(tmp_path)])
    assert cli._expected(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
    assert not cli._expected(RuntimeError("INTERNAL: a bug in XLA"))


def test_the_console_script_prints_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm_jax.cli", "sample", "--out", str(tmp_path / "taken")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DDPM_JAX_DEBUG": ""},
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ddpm-jax sample: error: --out {tmp_path / 'taken'}: {tmp_path / 'taken'} is a file, not a folder; "
        "give a folder path"
    )
    assert "Traceback" not in proc.stderr


def test_the_program_returns_mains_code_and_skips_the_exits_last_collection(monkeypatch, capsys, tmp_path):
    import gc

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(
        sys, "argv", ["ddpm-jax", "sample", "--model", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)]
    )
    assert cli.command() == 2 and frozen == [True]
    one_line(capsys.readouterr().err)
