"""What the commands decide where an option makes no sense, each a documented choice
(docs/limits.md): a 0-step training run is refused as a 0-step chain is, a batch larger than
the data is said, a --bound that is not one is named without inviting an unsafe load, and an
`eval --out` that holds the reports already is refused before the work."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from ddpm_jax import config
from ddpm_jax.cli import main

from .helpers import ONE_LEVEL_UNET, TINY_DIFFUSION


@pytest.fixture
def mini(monkeypatch):
    monkeypatch.setitem(config.UNET_PRESETS, "mini", ONE_LEVEL_UNET)
    monkeypatch.setitem(config.DIFFUSION_PRESETS, "mini", TINY_DIFFUSION)


def _train(out, *extra):
    return main(["train", "--data", "digits", "--config", "mini", "--out", str(out), "--sample-every", "0", *extra])


def test_a_training_run_of_0_steps_is_refused(mini, tmp_path, capsys):
    assert _train(tmp_path / "run", "--steps", "0") == 2
    assert "steps=0 is out of range; expected 1 <=" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ema.safetensors").exists()


def test_a_batch_larger_than_the_data_is_said(mini, tmp_path, caplog):
    data = tmp_path / "eight.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8))
    args = ["train", "--data", str(data), "--config", "mini", "--steps", "1", "--batch", "64"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--out", str(tmp_path / "run"), "--sample-every", "0"]) == 0
    assert "the batch (64) is larger than the data (8 images): every batch repeats images" in caplog.text


def test_a_bound_file_of_random_bytes_is_named_without_an_unsafe_hint(tmp_path, capsys):
    junk = tmp_path / "bound.npz"
    junk.write_bytes(os.urandom(4096))
    assert main(["eval", "rd", "--bound", str(junk)]) == 2
    err = capsys.readouterr().err
    assert f"--bound {junk} is not a bound.npz of `ddpm-jax eval bpd --out DIR`" in err
    assert "unsafe" not in err and "trust" not in err


def test_eval_refuses_an_out_that_holds_its_reports_before_the_work(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "bpd.json").write_text("{}")
    # An unknown model: the --out check comes first, so nothing was computed.
    assert main(["eval", "bpd", "--model", "no_such_model", "--out", str(out)]) == 2
    assert f"{out / 'bpd.json'} already exist(s)" in capsys.readouterr().err
    assert (out / "bpd.json").read_text() == "{}"
