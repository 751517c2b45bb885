"""The training loop as a library: previews reuse one compiled sampler, the log
never repeats a step after a resume, bad settings are refused before training."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import ddpm_jax.sampling
import ddpm_jax.trainer as trainer_mod
from ddpm_jax.cli import main
from ddpm_jax.train import TrainConfig
from ddpm_jax.trainer import RunOptions, Trainer, open_run

from .helpers import MINI_TRAIN, ONE_LEVEL_UNET, TINY_DIFFUSION


@pytest.fixture(scope="module")
def data(digits, mini_train_step):
    """The digits, for which the step of these tests (`mini_train_step`) is compiled once per run."""
    return digits


def test_previews_reuse_one_compiled_sampler(data, monkeypatch):
    traces = []
    real = ddpm_jax.sampling.denoise_chunk

    # Called once per trace of the jitted chunk. Under the real one's name, and with previews of
    # the size `fit` makes, its program is the one test_train_command.py's previews compile.
    @functools.wraps(real)
    def counting(*a, **k):
        traces.append(1)
        return real(*a, **k)

    monkeypatch.setattr("ddpm_jax.pipeline.denoise_chunk", counting)
    t = Trainer(data, unet_config=ONE_LEVEL_UNET, diffusion_config=TINY_DIFFUSION, train_config=MINI_TRAIN)
    first = np.asarray(t.preview())
    t.train(3)
    second = np.asarray(t.preview())
    assert len(traces) == 1  # a new Diffusion per preview traced (and compiled) again
    assert not np.array_equal(first, second)  # the new EMA params were used
    assert t.step == 3


def test_train_steps_match_the_jitted_step_called_by_hand(data):
    """Trainer.train(n) is n calls of train.make_train_step, nothing more."""
    from ddpm_jax.coefficients import make_coefficients
    from ddpm_jax.train import init_state, make_train_step

    a = Trainer(data, unet_config=ONE_LEVEL_UNET, diffusion_config=TINY_DIFFUSION, train_config=MINI_TRAIN)
    metrics = a.train(4)
    state, step = init_state(ONE_LEVEL_UNET, MINI_TRAIN), make_train_step(ONE_LEVEL_UNET, MINI_TRAIN)
    losses = []
    for _ in range(4):
        state, m = step(state, data, make_coefficients(TINY_DIFFUSION))
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(float(metrics["loss_sum"]), sum(losses), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(a.state.key), np.asarray(state.key))


def test_resumed_log_has_each_step_once(tmp_path, monkeypatch, data):
    """A run killed after writing log lines past its last checkpoint, then resumed."""
    opts = RunOptions(steps=8, ckpt_every=3, sample_every=0, log_every=1)
    real = trainer_mod.make_train_step

    def dies_after_seven(*args):
        step, calls = real(*args), []

        def killed(*a):
            if len(calls) == 7:
                raise KeyboardInterrupt("simulated kill")
            calls.append(1)
            return step(*a)

        return killed

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "make_train_step", dies_after_seven)
        with pytest.raises(KeyboardInterrupt):
            open_run(
                tmp_path, data, unet_config=ONE_LEVEL_UNET, diffusion_config=TINY_DIFFUSION, train_config=MINI_TRAIN
            ).fit(tmp_path, opts, progress=False)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # step 7 was logged, the newest checkpoint is step 6
    open_run(
        tmp_path,
        data,
        unet_config=ONE_LEVEL_UNET,
        diffusion_config=TINY_DIFFUSION,
        train_config=MINI_TRAIN,
        resume=True,
    ).fit(tmp_path, opts, progress=False)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--batch", "0"], r"batch_size=0 is out of range; expected 1 <= batch_size <= "),
        (["--lr", "nan"], r"learning_rate=nan is out of range"),
        (["--lr", "0"], r"learning_rate=0.0 is out of range"),
        (["--ema-decay", "1.5"], r"ema_decay=1.5 is out of range"),
        (["--warmup", "-1"], r"warmup_steps=-1 is out of range"),
        (["--log-every", "0"], r"log_every=0 is out of range"),
        (["--steps", "-3"], r"steps=-3 is out of range"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    code = main(["train", "--data", "digits", "--config", "digits", "--steps", "5", "--out", str(out), *flags])
    assert code == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("my notes")
    assert main(["train", "--data", "digits", "--steps", "1", "--out", str(out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "my notes"


def test_train_config_accepts_the_presets():
    from ddpm_jax.train import TRAIN_PRESETS

    assert all(isinstance(c, TrainConfig) for c in TRAIN_PRESETS.values())
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1)
