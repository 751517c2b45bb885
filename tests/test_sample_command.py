"""`ddpm-jax sample`: the images of `denoise`, any batch size, resuming a folder, samplers, bad steps."""

import numpy as np
from PIL import Image

from ddpm_jax import Diffusion
from ddpm_jax.cli import main
from ddpm_jax.images import to_uint8


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
