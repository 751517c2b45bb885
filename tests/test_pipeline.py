"""Diffusion's files and images: params on disk, uint8, PNGs, the sample CLI."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from ddpm_jax import Diffusion
from ddpm_jax.cli import main
from ddpm_jax.images import make_grid, to_uint8
from ddpm_jax.weights import flatten_params, load_weights

from .helpers import TINY_DIFFUSION, TINY_UNET


def test_params_round_trip_through_safetensors(saved, tiny_model):
    dcfg, ucfg, params = load_weights(saved)
    assert dcfg == TINY_DIFFUSION and ucfg == TINY_UNET
    a, b = flatten_params(params), flatten_params(tiny_model.params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    again = Diffusion.from_pretrained(saved, chunk_size=8)
    np.testing.assert_array_equal(again.denoise(2, n_steps=5, key=1), tiny_model.denoise(2, n_steps=5, key=1))
    assert again.num_timesteps == 40 and again.model.config == TINY_UNET


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path, saved):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Diffusion.from_pretrained(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"conv.weight": np.zeros((3, 3), np.float32)}, foreign)
    with pytest.raises(ValueError, match="not ddpm_jax params.*ddpm-jax convert"):
        Diffusion.from_pretrained(foreign)
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        Diffusion.from_pretrained("no_such_model")


def test_params_that_do_not_fit_the_config_are_named(tiny_params, tmp_path):
    params = dict(tiny_params)
    params.pop("conv_out")
    with pytest.raises(ValueError, match="2 missing: conv_out/bias, conv_out/kernel"):
        Diffusion(TINY_DIFFUSION, TINY_UNET, params)


def test_to_uint8():
    x = np.array([[-1.0, 0.0, 1.0, 0.999]], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 128, 255, 255])
    wild = np.array([-3.0, 2.0], np.float32).reshape(1, 1, 2, 1)
    with pytest.raises(ValueError, match=r"outside \[-1, 1\].*clip=True"):
        to_uint8(wild)
    np.testing.assert_array_equal(to_uint8(wild, clip=True).ravel(), [0, 255])


def test_save_and_grid(tmp_path, tiny_model):
    x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    paths = tiny_model.save(x, str(tmp_path / "s" / "{:03}.png"), start_idx=5)
    assert [p.name for p in paths] == ["005.png", "006.png", "007.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1]))[..., None], to_uint8(x[1:2])[0])
    grid = make_grid(to_uint8(x), ncol=2, pad=1)
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1, 1)
    np.testing.assert_array_equal(grid[10:18, 1:9], to_uint8(x)[2])


def test_sample_cli(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "--model", str(saved), "--n", "3", "--seed", "2", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["00000.png", "00001.png", "00002.png", "grid.png", "manifest.json"]
    want = to_uint8(Diffusion.from_pretrained(saved).denoise(3, key=2), clip=True)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00001.png"))[..., None], want[1])


def test_sample_cli_bad_steps(saved, tmp_path, capsys):
    assert main(["sample", "--model", str(saved), "--steps", "99", "--out", str(tmp_path)]) == 2
    assert "steps=99 is out of range" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_config_metadata_is_json(saved):
    from safetensors import safe_open

    with safe_open(saved, framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["unet_config"])["ch_mult"] == [1, 2]


def test_sample_cli_batches_resume_and_samplers(saved, tmp_path):
    def run(out, *extra):
        assert main(["sample", "--model", str(saved), "--n", "5", "--seed", "4", "--out", str(out), *extra]) == 0
        return np.stack([np.asarray(Image.open(out / f"{i:05}.png"), np.int16) for i in range(5)])

    whole = run(tmp_path / "a", "--batch", "5")
    batched = run(tmp_path / "b", "--batch", "2")
    assert np.abs(whole - batched).max() <= 1  # same samples; float rounding only
    # Resume: a batch whose files exist is skipped, a missing one is redone.
    (tmp_path / "b" / "00004.png").unlink()
    marker = (tmp_path / "b" / "00000.png").stat().st_mtime_ns
    np.testing.assert_array_equal(run(tmp_path / "b", "--batch", "2"), batched)
    assert (tmp_path / "b" / "00000.png").stat().st_mtime_ns == marker
    ddim = run(tmp_path / "c", "--steps", "5", "--sampler", "ddim")
    assert ddim.shape == whole.shape and np.abs(ddim - whole).max() > 0
