"""`ddpm-jax train`: a killed run resumed from its checkpoint ends where one run ends."""

import numpy as np
import pytest

from ddpm_jax import config
from ddpm_jax.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint
from ddpm_jax.cli import main
from ddpm_jax.pipeline import Diffusion
from ddpm_jax.weights import flatten_params, load_weights

from .helpers import MINI_TRAIN, ONE_LEVEL_UNET, TINY_DIFFUSION, kill_train_steps_after, tiny_diffusion_model


@pytest.fixture(autouse=True)
def mini_preset(monkeypatch, mini_train_step):
    """The "mini" preset; with `_train`'s flags its TrainConfig is MINI_TRAIN, so that the
    command's step is `mini_train_step`, compiled once per run."""
    monkeypatch.setitem(config.UNET_PRESETS, "mini", ONE_LEVEL_UNET)
    monkeypatch.setitem(config.DIFFUSION_PRESETS, "mini", TINY_DIFFUSION)


def _train(out, steps, *extra):
    return main(
        [
            "train",
            "--data",
            "digits",
            "--config",
            "mini",
            "--steps",
            str(steps),
            "--batch",
            str(MINI_TRAIN.batch_size),
            "--lr",
            str(MINI_TRAIN.learning_rate),
            "--warmup",
            str(MINI_TRAIN.warmup_steps),
            "--ema-decay",
            str(MINI_TRAIN.ema_decay),
            "--no-flip" if not MINI_TRAIN.random_flip else "--flip",
            "--out",
            str(out),
            "--ckpt-every",
            "3",
            "--log-every",
            "2",
            *extra,
        ]
    )


def test_killed_and_resumed_run_matches_one_run(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _train(one, 8, "--sample-every", "4") == 0
    assert (one / "samples" / "step-00000004.png").is_file()
    with monkeypatch.context() as m:
        kill_train_steps_after(m, 7)  # dies during step 8; the last checkpoint is step 6
        with pytest.raises(KeyboardInterrupt):
            _train(two, 8, "--sample-every", "0")
    assert [p.name for p in list_checkpoints(two / "checkpoints")][-1] == "ckpt-00000006.safetensors"
    assert _train(two, 8, "--sample-every", "0", "--resume") == 0
    _, a, step_a = read_checkpoint(checkpoint_path(one / "checkpoints", 8))
    _, b, step_b = read_checkpoint(checkpoint_path(two / "checkpoints", 8))
    assert step_a == step_b == 8 and sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The export is the EMA params, in the format from_pretrained reads.
    dcfg, ucfg, ema = load_weights(one / "ema.safetensors")
    assert (dcfg, ucfg) == (TINY_DIFFUSION, ONE_LEVEL_UNET)
    for name, v in flatten_params(ema).items():
        np.testing.assert_array_equal(v, a[".ema_params" + "".join(f"['{p}']" for p in name.split("/"))])
    assert Diffusion.from_pretrained(str(one / "ema.safetensors")).image_shape == (8, 8, 1)


def test_corrupt_latest_checkpoint_stops_resume_and_is_kept(tmp_path, capsys):
    assert _train(tmp_path, 6, "--sample-every", "0") == 0
    latest = checkpoint_path(tmp_path / "checkpoints", 6)
    raw = bytearray(latest.read_bytes())
    raw[-3] ^= 0x55
    latest.write_bytes(bytes(raw))
    capsys.readouterr()
    assert _train(tmp_path, 9, "--sample-every", "0", "--resume") == 2
    err = capsys.readouterr().err
    assert "ckpt-00000006.safetensors is corrupt" in err and "left in place" in err
    assert latest.read_bytes() == bytes(raw)
    assert read_checkpoint(checkpoint_path(tmp_path / "checkpoints", 3))[2] == 3


def test_refuses_to_mix_runs(tmp_path, capsys):
    assert _train(tmp_path, 3, "--sample-every", "0") == 0
    capsys.readouterr()
    assert _train(tmp_path, 6, "--sample-every", "0") == 2
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    assert _train(tmp_path, 6, "--sample-every", "0", "--resume", "--seed", "5") == 2
    assert "train_config.seed: checkpoint 0 != requested 5" in capsys.readouterr().err
    assert _train(tmp_path / "empty", 6, "--resume") == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_init_starts_from_a_model_and_prediction_changes_what_it_learns(tmp_path, capsys):
    """`--init` takes a model's params and configs (with an EMA decay of 1 the export is those
    params while the trained ones move); `--prediction v` fine-tunes an eps model into a v model;
    a resume needs the same flags."""
    teacher = tiny_diffusion_model(ONE_LEVEL_UNET, T=40)
    path = tmp_path / "eps.safetensors"
    teacher.save_pretrained(path)
    init = ["--init", str(path), "--prediction", "v", "--sample-every", "0", "--ema-decay", "1"]
    assert _train(tmp_path, 3, *init) == 0
    dcfg, ucfg, ema = load_weights(tmp_path / "ema.safetensors")
    assert dcfg.prediction_type == "v" and ucfg == ONE_LEVEL_UNET
    assert dcfg.num_diffusion_timesteps == teacher.diffusion_config.num_diffusion_timesteps
    want = flatten_params(teacher.params)
    assert sorted(flatten_params(ema)) == sorted(want)
    for k, v in flatten_params(ema).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)
    _, state, _ = read_checkpoint(checkpoint_path(tmp_path / "checkpoints", 3))
    moved = [
        k for k in want if not np.array_equal(state[".params" + "".join(f"['{p}']" for p in k.split("/"))], want[k])
    ]
    assert len(moved) == len(want)
    capsys.readouterr()
    assert _train(tmp_path, 6, *init[:2], "--sample-every", "0", "--ema-decay", "1", "--resume") == 2
    assert "prediction_type: checkpoint 'v' != requested 'eps'" in capsys.readouterr().err
    assert _train(tmp_path, 6, *init, "--resume") == 0
