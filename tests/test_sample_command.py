"""`ddpm-jax sample`: the images of `denoise`, any batch size, resuming a folder, samplers, bad steps,
the conv a job runs."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import Diffusion
from ddpm_jax.cli import main
from ddpm_jax.images import to_uint8
from ddpm_jax.ops import SHORT_JOB, conv_for_job

from .helpers import ONE_LEVEL_UNET, tiny_diffusion_model


def test_sample_writes_the_images_of_denoise(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "--model", str(saved), "--n", "3", "--seed", "2", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["00000.png", "00001.png", "00002.png", "grid.png", "manifest.json"]
    want = to_uint8(Diffusion.from_pretrained(saved).denoise(3, key=2), clip=True)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00001.png"))[..., None], want[1])


def test_bad_steps_are_refused_before_anything_is_written(saved, tmp_path, capsys):
    assert main(["sample", "--model", str(saved), "--steps", "99", "--out", str(tmp_path)]) == 2
    assert "steps=99 is out of range" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_batches_resume_and_samplers(saved, tmp_path):
    """3 samples, as the test above: whole, then in batches of 2 and 1 (the programs of
    test_no_data_loss.py, whose model has the same configs)."""

    def run(out, *extra):
        assert main(["sample", "--model", str(saved), "--n", "3", "--seed", "4", "--out", str(out), *extra]) == 0
        return np.stack([np.asarray(Image.open(out / f"{i:05}.png"), np.int16) for i in range(3)])

    whole = run(tmp_path / "a", "--batch", "3")
    batched = run(tmp_path / "b", "--batch", "2")
    assert np.abs(whole - batched).max() <= 1  # same samples; float rounding only
    # Resume: a batch whose files exist is skipped, a missing one is redone.
    (tmp_path / "b" / "00002.png").unlink()
    marker = (tmp_path / "b" / "00000.png").stat().st_mtime_ns
    np.testing.assert_array_equal(run(tmp_path / "b", "--batch", "2"), batched)
    assert (tmp_path / "b" / "00000.png").stat().st_mtime_ns == marker
    ddim = run(tmp_path / "c", "--steps", "5", "--sampler", "ddim")
    assert ddim.shape == whole.shape and np.abs(ddim - whole).max() > 0


def test_conv_for_job():
    assert conv_for_job("auto", SHORT_JOB) == "xla"
    assert conv_for_job("auto", SHORT_JOB + 1) == "auto"
    assert conv_for_job("winograd", 1) == "winograd" and conv_for_job("xla", 10**6) == "xla"
    with pytest.raises(ValueError, match="unknown conv 'fast'; valid: auto, xla, winograd"):
        conv_for_job("fast", 1)


# 128 channels: "auto" runs its 3x3 convs on 8x8 maps as Winograd F(2x2), as at the cifar10 size.
WIDE_UNET = dataclasses.replace(ONE_LEVEL_UNET, ch=128, dropout=0.0)


def test_a_short_job_runs_xla_convolution_and_traces_only_the_plain_unet(tmp_path):
    """In fresh processes with one new cache, as a user's first pictures: a job of at most SHORT_JOB
    pictures x steps never traces the Winograd UNet (only the plain one, which loading checks against),
    a longer one does; --conv pins either; the manifest says which ran, and they agree to rounding."""
    path = tmp_path / "wide.safetensors"
    tiny_diffusion_model(WIDE_UNET, T=40).save_pretrained(path)
    env = {**os.environ, "DDPM_JAX_CACHE": str(tmp_path / "cache")}

    def sample(out, n, *extra):
        cmd = [sys.executable, "-m", "ddpm_jax.cli", "sample", "--model", str(path), "--n", str(n), "--steps", "8"]
        cmd += ["--sampler", "ddim", "--seed", "3", "--out", str(tmp_path / out), *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        conv = json.loads((tmp_path / out / "manifest.json").read_text())["conv"]
        traced = len(list((tmp_path / "cache").glob("*-exported/run_shapes-*.json")))
        return conv, traced, np.asarray(Image.open(tmp_path / out / "00000.png"), np.int16)

    conv, traced, short = sample("short", SHORT_JOB // 8)
    assert (conv, traced) == ("xla", 1)
    conv, traced, long = sample("long", SHORT_JOB // 8 + 1)
    assert (conv, traced) == ("auto", 2)
    conv, traced, pinned = sample("pinned", SHORT_JOB // 8, "--conv", "winograd")
    assert (conv, traced) == ("winograd", 3)  # Winograd wherever it can: ops of its own
    assert np.abs(short - pinned).max() <= 1 and np.abs(long - pinned).max() <= 1  # the same picture


def test_a_folder_from_before_conv_was_recorded(saved, tmp_path, capsys):
    """A manifest without "conv" was written by a run that used "auto": such a run resumes, a short
    job (now XLA's conv) into such a folder is refused with what differs."""

    def forget_conv(out):
        manifest = json.loads((out / "manifest.json").read_text())
        del manifest["conv"]
        (out / "manifest.json").write_text(json.dumps(manifest))

    long = ["sample", "--model", str(saved), "--n", "3", "--seed", "4", "--out", str(tmp_path / "long")]
    assert main(long) == 0
    forget_conv(tmp_path / "long")
    (tmp_path / "long" / "00002.png").unlink()
    assert main(long) == 0 and (tmp_path / "long" / "00002.png").is_file()
    short = ["sample", "--model", str(saved), "--n", "1", "--steps", "5", "--sampler", "ddim"]
    assert main([*short, "--out", str(tmp_path / "short")]) == 0
    forget_conv(tmp_path / "short")
    capsys.readouterr()
    assert main([*short, "--out", str(tmp_path / "short")]) == 2
    assert "conv 'auto' there, 'xla' now" in capsys.readouterr().err
