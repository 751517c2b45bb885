"""`ddpm-jax eval bpd|rd|fid` end to end, and the sample-quality metrics against their definitions."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy.linalg import sqrtm

from ddpm_jax.cli import main
from ddpm_jax.data import load_digits_images
from ddpm_jax.evaluation import eval_images, table_times
from ddpm_jax.fid import Stats, frechet_distance, inception_score, kernel_inception_distance, load_stats
from ddpm_jax.images import save_grid, save_images, to_uint8
from ddpm_jax.likelihood import Bound, rate_distortion

from .helpers import random_inception_state


def run(capsys, *args):
    code = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# --- bits/dim and rate-distortion


def test_bpd_and_rd_commands(tiny_model, saved, tmp_path, capsys):
    """5 images in batches of 3 (the last padded) give each image's own bound; rd reads it back."""
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=images)
    code, out, err = run(
        capsys,
        "bpd",
        "--model",
        saved,
        "--data",
        tmp_path / "x.npz",
        "--batch",
        4,
        "--seed",
        3,
        "--out",
        tmp_path / "bpd",
    )
    assert code == 0, err
    with np.load(tmp_path / "bpd" / "bound.npz") as f:
        bound = Bound(*(f[k] for k in Bound._fields))
    want = tiny_model.bpd(images[:4], key=3)  # the params `saved` holds
    np.testing.assert_allclose(bound.terms[:4], want.terms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bound.total[:4], want.total, rtol=1e-5)
    summary = json.loads((tmp_path / "bpd" / "bpd.json").read_text())
    assert summary["n"] == 5 and summary["T"] == 40 and summary["seed"] == 3 and summary["clip"] is True
    np.testing.assert_allclose(summary["bpd"], bound.total.mean(), rtol=1e-12)
    np.testing.assert_allclose(summary["stderr"], bound.total.std(ddof=1) / np.sqrt(5), rtol=1e-12)
    np.testing.assert_allclose(summary["L_0"] + summary["L_1..T-1"] + summary["L_T"], summary["bpd"], rtol=1e-6)
    assert f"{summary['bpd']:.4f} +- {summary['stderr']:.4f} bits/dim" in out
    assert "L_0 (decoder)" in out and "L_40 (prior)" in out
    assert Image.open(tmp_path / "bpd" / "bpd_terms.png").size == (480, 340)

    code, out, err = run(capsys, "rd", "--bound", tmp_path / "bpd" / "bound.npz", "--out", tmp_path / "rd")
    assert code == 0, err
    table = json.loads((tmp_path / "rd" / "rd.json").read_text())["table"]
    rd = rate_distortion(bound)
    assert [row["reverse_time"] for row in table] == [40, 36, 32, 28, 24, 20, 16, 12, 8, 4]
    for row in table:
        r = row["reverse_time"]
        np.testing.assert_allclose([row["rate"], row["distortion"]], [rd.rate[r - 1], rd.distortion[r - 1]])
        assert f"{r:>12}  {row['rate']:>15.5f}" in out
    assert Image.open(tmp_path / "rd" / "rd.png").size == (3 * 480, 340)


def test_table_times_are_the_papers():
    assert table_times(1000) == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    assert table_times(5) == [5, 4, 3, 2, 1]


def test_eval_images_are_quantised_to_the_grid(tmp_path):
    held_out = eval_images("digits", 16, 1)
    train = eval_images("digits-train", 16, 1)
    assert held_out.dtype == train.dtype == np.uint8
    assert held_out.shape == (450, 16, 16, 1) and train.shape == (1347, 16, 16, 1)
    np.testing.assert_array_equal(train, to_uint8(load_digits_images(16), clip=True))
    assert eval_images("digits", 16, 3).shape == (450, 16, 16, 3)
    save_images(train[:3], str(tmp_path / "{}.png"))
    np.testing.assert_array_equal(eval_images(str(tmp_path), 16, 1), train[:3])


@pytest.mark.parametrize(
    "args, match",
    [
        (["bpd", "--data", "{tmp}/empty"], "no readable .png/.jpg/.jpeg/.tif/.tiff/.bmp/.webp images"),
        (["bpd", "--data", "{tmp}/missing"], "no such file or folder"),
        (["bpd", "--n", "0"], r"--n=0 is out of range"),
        (["rd", "--bound", "{tmp}/missing.npz"], "no such file"),
        (["rd", "--bound", "{tmp}/other.npz"], r"lacks \['mse', 'prior', 'terms', 'total'\]"),
    ],
)
def test_bound_commands_refuse_bad_input(saved, tmp_path, capsys, args, match):
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "other.npz", images=np.zeros((1, 8, 8, 1), np.uint8))
    args = [a.format(tmp=tmp_path) for a in args]
    code, _, err = run(capsys, *args[:1], "--model", saved, *args[1:])
    assert code == 2
    assert re.search(match, err), err


# --- FID, KID, IS


def test_frechet_distance_of_gaussians_with_known_moments():
    """Commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(0)
    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mu1, mu2 = rng.normal(size=(2, d))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(Stats(mu1, s1, 100), Stats(mu2, s2, 7)), want, rtol=1e-9)
    assert abs(frechet_distance(Stats(mu1, s1, 100), Stats(mu1, s1, 0))) < 1e-9
    # general covariances, against the matrix square root of scipy
    m1, m2 = rng.normal(size=(2, d, d))
    s1, s2 = m1 @ m1.T / d, m2 @ m2.T / d
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    np.testing.assert_allclose(frechet_distance(Stats(mu1, s1, 10), Stats(mu2, s2, 10)), want, rtol=1e-7)


def test_kid_and_is_follow_their_definitions():
    rng = np.random.default_rng(1)
    d, n = 8, 20
    x, y = rng.normal(size=(n, d)), rng.normal(0.5, 1.2, size=(n, d))
    kernel = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = ~np.eye(n, dtype=bool)
    mmd = kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean()  # unbiased MMD^2
    kid, kid_std, size = kernel_inception_distance(x, y, subset_size=1000, subsets=3)
    assert size == n  # the whole set, so every subset is the same
    np.testing.assert_allclose([kid, kid_std], [mmd, 0.0], rtol=1e-9, atol=1e-12)
    logits = rng.normal(size=(n, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), axis=1)))
    np.testing.assert_allclose(inception_score(logits, splits=1)[0], want, rtol=1e-9)


def test_inception_reads_a_saved_state_dict(tmp_path):
    """The weights file's keys, read with weights_only; features of an image alone or in a batch."""
    import torch

    from ddpm_jax.fid import inception_features
    from ddpm_jax.inception import load_inception, tf1_bilinear_matrix

    torch.save(random_inception_state(1), tmp_path / "w.pth")
    net = load_inception(tmp_path / "w.pth")
    images = np.random.default_rng(4).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    both = inception_features(images, net, batch=2)
    alone = inception_features(images[1:], net)
    assert both.pool.shape == (2, 2048) and both.logits.shape == (2, 1008)
    np.testing.assert_allclose(alone.pool[0], both.pool[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(both.logits, both.pool @ net.fc.weight.numpy().T, rtol=1e-4, atol=1e-4)
    # TensorFlow 1's resize (align_corners=False): output i reads input i * n_in / n_out
    np.testing.assert_array_equal(tf1_bilinear_matrix(299, 299), np.eye(299))
    np.testing.assert_allclose(tf1_bilinear_matrix(2, 4), [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])


@pytest.mark.slow
def test_fid_command_end_to_end(tmp_path, capsys):
    """Random Inception weights saved here; samples as PNGs (beside the preview grid, which is
    not a sample), reference as an .npz: FID against numpy on the same features; then the
    reference's saved statistics give the same FID. Slow: 13 Inception passes at 299 x 299 and
    two FIDs at 2048 dimensions (eigenvalues of a 2048 x 2048 matrix each), about a minute."""
    import torch

    from ddpm_jax.fid import inception_features
    from ddpm_jax.inception import load_inception

    rng = np.random.default_rng(2)
    weights = tmp_path / "pt_inception-random.pth"
    torch.save(random_inception_state(0), weights)
    samples = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    ref = rng.integers(0, 200, (2, 16, 16, 1), dtype=np.uint8)
    save_images(samples, str(tmp_path / "samples" / "{:05}.png"))
    save_grid(samples, tmp_path / "samples" / "grid.png")
    np.savez(tmp_path / "ref.npz", images=ref)

    net = load_inception(weights)
    fake = inception_features(np.repeat(samples, 3, axis=-1), net)
    real = inception_features(np.repeat(ref, 3, axis=-1), net)
    assert fake.pool.shape == (3, 2048) and fake.logits.shape == (3, 1008) and fake.pool.std() > 0.01
    f, r = fake.pool.astype(np.float64), real.pool.astype(np.float64)
    # With S = A^T A and S' = B^T B (A, B the centered features / sqrt(n - 1)), the nonzero
    # eigenvalues of S S' are the squared singular values of A B^T: tr (S S')^(1/2) is their sum.
    a, b = (f - f.mean(0)) / np.sqrt(2), r - r.mean(0)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    want = np.sum((f.mean(0) - r.mean(0)) ** 2) + np.sum(a * a) + np.sum(b * b) - 2 * trace_sqrt
    assert want > 1.0

    code, out, err = run(
        capsys,
        "fid",
        "--samples",
        tmp_path / "samples",
        "--ref",
        tmp_path / "ref.npz",
        "--inception-weights",
        weights,
        "--batch",
        2,
        "--out",
        tmp_path / "out",
        "--save-ref-stats",
        tmp_path / "ref_stats.npz",
    )
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "fid.json").read_text())
    assert result["n_samples"] == 3 and result["n_ref"] == 2 and result["kid_subset_size"] == 2
    np.testing.assert_allclose(result["fid"], want, rtol=1e-4)
    assert f"FID {result['fid']:.4f} (3 samples vs 2 reference images)" in out
    assert np.isfinite(result["kid"]) and result["is"] >= 1.0
    stats = load_stats(tmp_path / "ref_stats.npz")
    assert stats.n == 2
    np.testing.assert_allclose(stats.mu, r.mean(0), rtol=1e-5, atol=1e-6)

    code, out, err = run(
        capsys,
        "fid",
        "--samples",
        tmp_path / "samples",
        "--ref",
        tmp_path / "ref_stats.npz",
        "--inception-weights",
        weights,
    )
    assert code == 0, err
    assert f"FID {result['fid']:.4f} (3 samples vs 2 reference images)" in out
    assert "KID: needs reference images" in out


@pytest.mark.parametrize(
    "setup, match",
    [
        ("missing_weights", "Inception weights .*missing.pth not found; expected pt_inception-2015-12-05"),
        ("no_weights", "DDPM_JAX_INCEPTION_WEIGHTS"),
        ("wrong_weights", "does not fit the FID Inception-v3"),
        ("empty_samples", "no .png/.jpg/.jpeg images and no samples_\\*.npz in"),
        ("mixed_sizes", "differ in size"),
    ],
)
def test_fid_refuses_bad_input(tmp_path, capsys, monkeypatch, setup, match):
    import torch

    rng = np.random.default_rng(3)
    (tmp_path / "samples").mkdir()
    if setup != "empty_samples":
        save_images(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), str(tmp_path / "samples" / "{}.png"))
    if setup == "mixed_sizes":
        save_images(rng.integers(0, 256, (1, 9, 9, 3), dtype=np.uint8), str(tmp_path / "samples" / "b{}.png"))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    np.savez(tmp_path / "ref.npz", images=rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    weights = {
        "missing_weights": [tmp_path / "missing.pth"],
        "no_weights": [],
        "wrong_weights": [tmp_path / "wrong.pth"],
    }.get(setup, [tmp_path / "wrong.pth"])
    monkeypatch.delenv("DDPM_JAX_INCEPTION_WEIGHTS", raising=False)
    code, _, err = run(
        capsys,
        "fid",
        "--samples",
        tmp_path / "samples",
        "--ref",
        tmp_path / "ref.npz",
        *(["--inception-weights", *weights] if weights else []),
    )
    assert code == 2
    assert re.search(match, err), err
