"""Nothing is lost. Several images never share a file name;
a sample folder holds one run, recorded in its manifest, and a run with other
settings is refused; torn files are redone, never taken as done; temporary
files of killed writes and downloads are removed by the next run that owns them."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from ddpm_jax import Diffusion
from ddpm_jax.checkpoint import list_checkpoints, remove_temporaries, save_checkpoint
from ddpm_jax.cli import main
from ddpm_jax.download import fetch
from ddpm_jax.images import save_images

from .helpers import TINY_UNET, CheckpointServer, random_params


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime: equal snapshots mean nothing was touched."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_several_images_in_one_file_name_is_an_error(tmp_path):
    model = Diffusion.__new__(Diffusion)  # `save` needs no params
    x = np.zeros((3, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"names .*same.png for images 0 and 1: 3 images need a placeholder"):
        model.save(x, str(tmp_path / "same.png"))
    with pytest.raises(ValueError, match=r"bad file name pattern '.*\{\}_\{\}.png'"):
        save_images(np.zeros((2, 8, 8, 1), np.uint8), str(tmp_path / "{}_{}.png"))
    with pytest.raises(ValueError, match="for images 0 and 1"):  # a placeholder that prints nothing
        save_images(np.zeros((2, 8, 8, 1), np.uint8), str(tmp_path / "{!r:.0}x.png"))
    assert list(tmp_path.iterdir()) == []  # checked before anything is written
    assert [p.name for p in model.save(x[:1], str(tmp_path / "one.png"))] == ["one.png"]
    assert [p.name for p in model.save(x, str(tmp_path / "{:02}.png"))] == ["00.png", "01.png", "02.png"]


def _model_file(folder: Path, seed: int) -> Path:
    """The tiny model with random params (no Flax init to compile) as a params file."""
    from ddpm_jax.weights import save_weights

    from .helpers import TINY_DIFFUSION

    path = folder / f"tiny-{seed}.safetensors"
    save_weights(path, random_params(TINY_UNET, seed=seed), diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return _model_file(tmp_path_factory.mktemp("models"), 0)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Same configs as `saved`, other params."""
    return _model_file(tmp_path_factory.mktemp("models"), 5)


def sample(model, out, *flags, n=3):
    """`ddpm-jax sample`, 4 steps; batches of 2 unless told (one compiled shape for every test)."""
    batch = [] if "--batch" in flags else ["--batch", "2"]
    return main(["sample", "--model", str(model), "--n", str(n), "--steps", "4", "--out", str(out), *batch, *flags])


def test_a_folder_holds_one_run_and_refuses_another(saved, other_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(saved, out, "--seed", "1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    keys = ("model", "seed", "sampler", "steps", "eta", "precision", "n", "file_format", "batch")
    assert {k: manifest[k] for k in keys} == {
        "model": str(saved),
        "seed": 1,
        "sampler": "ddpm",
        "steps": 4,
        "eta": None,
        "precision": "float32",
        "n": 3,
        "file_format": "png",
        "batch": None,
    }
    before = snapshot(out)
    capsys.readouterr()
    for flags, says in [
        (["--seed", "2"], "seed 1 there, 2 now"),
        (["--seed", "1", "--sampler", "ddim"], "sampler 'ddpm' there, 'ddim' now"),
        (["--seed", "1", "--precision", "mixed_bf16"], "precision 'float32' there, 'mixed_bf16' now"),
        (["--seed", "1", "--n", "4"], "n 3 there, 4 now"),
    ]:
        n = 4 if "--n" in flags else 3
        flags = [f for f in flags if f not in ("--n", "4")]
        assert sample(saved, out, *flags, n=n) == 2
        err = capsys.readouterr().err
        assert f"--out {out} holds another run" in err and says in err and "choose another --out" in err
    assert sample(other_model, out, "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "params_sha256" in err and f"model '{saved}' there, '{other_model}' now" in err
    assert snapshot(out) == before  # nothing written, nothing touched
    # The same command resumes: every batch is there and whole, nothing is sampled again.
    assert sample(saved, out, "--seed", "1", "--batch", "1") == 0  # PNGs do not depend on the batch
    assert "sampled 0, kept 3 already there" in capsys.readouterr().out
    assert {k: v for k, v in snapshot(out).items() if k != "grid.png"} == {
        k: v for k, v in before.items() if k != "grid.png"
    }


def test_npz_shards_of_another_batch_size_are_refused(saved, tmp_path, capsys):
    out = tmp_path / "npz"
    assert sample(saved, out, "--format", "npz", "--batch", "2") == 0
    shards = sorted(p.name for p in out.glob("*.npz"))
    assert shards == ["samples_0000000_2.npz", "samples_0000002_1.npz"]
    assert sample(saved, out, "--format", "npz", "--batch", "3") == 2
    assert "batch 2 there, 3 now" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.npz")) == shards  # no overlapping shards: 3 images, not 6


def test_samples_without_a_manifest_are_not_adopted(saved, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "00000.png").write_bytes(b"from an older version")
    assert sample(saved, out) == 2
    assert "holds samples (00000.png) but no manifest.json" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["00000.png"]


@pytest.mark.parametrize("fmt, victim", [("png", "00002.png"), ("npz", "samples_0000000_2.npz")])
def test_a_torn_file_is_sampled_again_not_taken_as_done(saved, tmp_path, fmt, victim, caplog):
    out = tmp_path / fmt
    assert sample(saved, out, "--format", fmt) == 0
    whole = (out / victim).read_bytes()
    (out / victim).write_bytes(whole[: len(whole) // 2])  # a killed run of an old, non-atomic version
    (out / f".{victim}.k1ll3d.tmp").write_bytes(b"half a file")  # and a killed run's temporary
    keep = (out / "00000.png").stat().st_mtime_ns if fmt == "png" else None
    assert sample(saved, out, "--format", fmt) == 0
    assert f"sampling again: {victim} is damaged" in caplog.text
    if fmt == "png":
        assert (out / victim).read_bytes() == whole  # the same sample, again
        assert (out / "00000.png").stat().st_mtime_ns == keep  # the whole batch before it was kept
    else:
        with np.load(out / victim) as f, np.load(io.BytesIO(whole)) as g:
            np.testing.assert_array_equal(f["images"], g["images"])
    assert not list(out.glob(".*.tmp"))


class _State(NamedTuple):
    step: np.ndarray
    w: np.ndarray


def test_checkpoint_temporaries_of_a_killed_run_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".ckpt-00000010.safetensors.a1b2c3d4.tmp").write_bytes(b"x" * 1000)
    (folder / ".log.jsonl.zz.tmp").write_bytes(b"not a checkpoint's")
    save_checkpoint(folder, _State(np.int32(20), np.ones(3, np.float32)), {"run": 1})
    assert [p.name for p in list_checkpoints(folder)] == ["ckpt-00000020.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == [".log.jsonl.zz.tmp", "ckpt-00000020.safetensors"]
    assert remove_temporaries(tmp_path / "none") == []


def test_download_temporaries_of_a_killed_fetch_are_removed(tmp_path, online):
    payload = bytes(range(256)) * 100
    server = CheckpointServer({"/m.ckpt": payload})
    try:
        (tmp_path / ".m.ckpt.x7y8z9ab.part").write_bytes(b"x" * 5000)  # a killed download
        (tmp_path / ".other.ckpt.x7y8z9ab.part").write_bytes(b"y")  # another file's: not ours to remove
        fetch(server.url("/m.ckpt"), tmp_path / "m.ckpt", hashlib.md5(payload).hexdigest())
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.x7y8z9ab.part", "m.ckpt", "m.ckpt.lock"]
