"""Interpolation through x_t (paper Sec. 4.4) and between fresh samples (slerp of x_T), API and CLI."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from ddpm_jax.cli import main
from ddpm_jax.interpolation import lerp, slerp
from ddpm_jax.sampling import initial_noise


def _pictures():
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (8, 8, 1)).astype(np.float32) for _ in range(2))


def test_lambda_0_and_1_are_the_reconstructions_of_a_and_b(tiny_model):
    a, b = _pictures()
    t, key = 15, 3
    mixes = np.asarray(tiny_model.interpolate(a, b, t, [0.0, 0.5, 1.0], key=key, index=2))
    for picture, got in ((a, mixes[0]), (b, mixes[2])):
        x_t = tiny_model.diffuse(1, t, x=picture[None], key=key, first_index=2)
        want = tiny_model.denoise(1, x=x_t, curr_step=t, key=key, first_index=2)
        np.testing.assert_allclose(got, np.asarray(want[0]), atol=1e-5)
    assert np.abs(mixes[1] - mixes[0]).max() > 1e-2 and np.abs(mixes[1] - mixes[2]).max() > 1e-2
    # Each lambda alone gives what it gives among others: the noise is fixed across lambda.
    alone = tiny_model.interpolate(a, b, t, [0.5], key=key, index=2)
    np.testing.assert_allclose(np.asarray(alone[0]), mixes[1], atol=1e-5)
    assert not np.allclose(np.asarray(tiny_model.interpolate(a, b, t, [0.5], key=key, index=3)), alone)


def test_interpolating_fresh_samples_starts_at_sample_a(tiny_model):
    T, key = tiny_model.num_timesteps, jax.random.key(4)
    seen = []
    # Three lambdas: the batch shape the test above compiled.
    ends = np.asarray(tiny_model.interpolate_noise([0.0, 0.5, 1.0], key=key, indices=(1, 3), callback=seen.append))
    np.testing.assert_allclose(ends[0], np.asarray(tiny_model.denoise(1, key=key, first_index=1)[0]), atol=1e-5)
    # lambda = 1: sample 3's x_T, decoded with sample 1's reverse noise.
    x_T = initial_noise(key, np.array([3]), tiny_model.image_shape)
    want = tiny_model.denoise(1, x=x_T, curr_step=T, key=key, first_index=1)
    np.testing.assert_allclose(ends[2], np.asarray(want[0]), atol=1e-5)
    assert seen[0].step == T - tiny_model.chunk_size and seen[-1].step == 0


def test_lerp_and_slerp():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    lam = np.array([0.0, 0.3, 1.0], np.float32)
    for mix in (lerp, slerp):
        out = np.asarray(mix(a, b, lam))
        np.testing.assert_allclose(out[0], a, atol=1e-5)
        np.testing.assert_allclose(out[2], b, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lerp(a, b, lam))[1], 0.7 * a + 0.3 * b, atol=1e-6)
    # Two independent Gaussians are nearly orthogonal: slerp keeps the norm, lerp shrinks it.
    half = np.array([0.5], np.float32)
    norm = np.linalg.norm(a)
    assert abs(np.linalg.norm(np.asarray(slerp(a, b, half))) / norm - 1) < 0.05
    assert np.linalg.norm(np.asarray(lerp(a, b, half))) / norm < 0.8
    np.testing.assert_allclose(np.asarray(slerp(a, a, half))[0], a, atol=1e-5)  # parallel: no 0/0


def test_bad_input_is_refused_with_the_fix(tiny_model):
    a, b = _pictures()
    cases = [
        (dict(lambdas=[0.5, 1.5]), "lambdas must lie in \\[0, 1\\]"),
        (dict(lambdas=[]), "non-empty 1-D"),
        (dict(t=0), "t=0 is out of range"),
        (dict(t=41), "t=41 is out of range; expected 1 <= t <= 40"),
        (dict(image_b=np.stack([b, b])), "image_b has a batch of 2"),
        (dict(image_a=a[:4]), "image_a has shape \\(4, 8, 1\\)"),
    ]
    for change, match in cases:
        kwargs = {**dict(image_a=a, image_b=b, t=10, lambdas=[0.0, 1.0]), **change}
        with pytest.raises(ValueError, match=match):
            tiny_model.interpolate_steps(**kwargs)
    with pytest.raises(ValueError, match="lambdas"):
        tiny_model.interpolate_noise_steps([2.0])
    with pytest.raises(ValueError, match="two samples"):
        tiny_model.interpolate_noise_steps([0.5], indices=(0, 1, 2))


def test_interpolate_cli_writes_a_strip(saved, tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(paths[-1])
    out = tmp_path / "strip.png"
    assert (
        main(
            [
                "interpolate",
                "--model",
                str(saved),
                "--a",
                str(paths[0]),
                "--b",
                str(paths[1]),
                "--t",
                "10",
                "--k",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    strip = np.asarray(Image.open(out))
    assert strip.shape == (2 + 8 + 2, 2 + 5 * 10)  # A, 3 mixes, B in one row
    np.testing.assert_array_equal(strip[2:10, 2:10], np.asarray(Image.open(paths[0])))
    np.testing.assert_array_equal(strip[2:10, 42:50], np.asarray(Image.open(paths[1])))

    assert main(["interpolate", "--model", str(saved), "--k", "3", "--out", str(tmp_path / "new.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "new.png")).shape == (12, 32)  # 3 mixes, no pictures at the ends
    assert main(["interpolate", "--model", str(saved), "--a", str(paths[0]), "--out", str(out)]) == 2
    assert "give both --a and --b" in capsys.readouterr().err
    assert (
        main(
            [
                "interpolate",
                "--model",
                str(saved),
                "--a",
                str(paths[0]),
                "--b",
                str(paths[1]),
                "--t",
                "41",
                "--out",
                str(tmp_path / "other.png"),
            ]
        )
        == 2
    )
    assert "t=41 is out of range" in capsys.readouterr().err
