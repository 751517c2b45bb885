"""Measuring a model as the paper did: the bound in bits/dim over a data set, rate and
distortion against reverse time (Sec. 4.3), and FID/KID/IS of samples; with the reports
(JSON and charts) `ddpm-jax eval` writes.

Data for the bound: `digits` (the bundled model's held-out split), `digits-train`,
an image folder or a .npy/.npz array. Images not on the 8-bit grid (the digits
pipeline upsamples with bicubic) are quantised to uint8 first, as the bound's
decoder is discrete.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .likelihood import Bound, RateDistortion

log = logging.getLogger(__name__)
DIGITS_HELD_OUT, DIGITS_TRAIN = "digits", "digits-train"


# --- the bound in bits/dim


def eval_images(spec: str, resolution: int, channels: int) -> np.ndarray:
    """The images of `spec` as (n, R, R, C) uint8, quantised to the 8-bit grid."""
    from .data import digits_split, digits_to_images, load_dataset
    from .images import to_uint8

    if spec == DIGITS_HELD_OUT:
        x = np.repeat(digits_to_images(digits_split()[2], resolution), channels, axis=-1)
    else:  # load_dataset's "digits" is the training split
        x = load_dataset("digits" if spec == DIGITS_TRAIN else spec, resolution, channels)
    q = to_uint8(x, clip=True)
    moved = np.abs(q / 127.5 - 1.0 - x).max()
    if moved > 1e-3:
        log.info("quantised %s to the 8-bit grid (largest change %.3g on [-1, 1])", spec, moved)
    return q


def compute_bound(model, images: np.ndarray, *, batch: int, seed: int, clip: bool) -> Bound:
    """The bound of every image, in batches of equal size (one compilation): image i keeps
    sample index i, so the result does not depend on `batch` or the devices."""
    import jax
    from tqdm import tqdm

    n, devices = len(images), jax.local_device_count()
    size = math.ceil(n / math.ceil(n / batch))
    size = math.ceil(size / devices) * devices
    parts = []
    with tqdm(total=n, unit="image", desc=f"bound, T={model.num_timesteps}") as bar:
        for start in range(0, n, size):
            x = images[start : start + size]
            count = len(x)
            if count < size:  # pad with copies of the first image; their results are dropped
                x = np.concatenate([x, np.repeat(x[:1], size - count, axis=0)])
            b = model.bpd(x, key=seed, clip=clip, first_index=start)
            parts.append(Bound(*(np.asarray(a)[:count] for a in b)))
            bar.update(count)
    return Bound(*(np.concatenate(a) for a in zip(*parts)))


def save_bound(path, bound: Bound) -> Path:
    """The bound's arrays in one .npz (read back by `load_bound`), written atomically."""
    from .atomic import write_with

    return write_with(path, lambda f: np.savez(f, **bound._asdict()))


def load_bound(path, what: str) -> Bound:
    """A bound.npz written by `save_bound`; errors name it as `what` (e.g. a flag)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file (write one with `ddpm-jax eval bpd --out DIR`)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):  # a bare .npy array
                raise ValueError("it holds one array, not the bound's arrays")
            missing = set(Bound._fields) - set(f.files)
            if missing:
                raise ValueError(f"it lacks {sorted(missing)}")
            return Bound(*(f[k] for k in Bound._fields))
    except (ValueError, OSError, EOFError) as err:  # numpy's own text would suggest an unsafe load
        why = str(err) if str(err).startswith(("it ", "it lacks")) else "not a readable .npz"
        raise ValueError(
            f"{what} {path} is not a bound.npz of `ddpm-jax eval bpd --out DIR` ({why}); "
            "write one with that command (ddpm-jax never unpickles it)"
        ) from None


def summarize_bound(bound: Bound) -> dict:
    """Mean total bits/dim with its standard error, and the split L_0 / L_1..L_{T-1} / L_T."""
    total, n = np.asarray(bound.total, np.float64), len(bound.total)
    return {
        "n": n,
        "bpd": float(total.mean()),
        "stderr": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "L_0": float(np.mean(bound.terms[:, 0], dtype=np.float64)),
        "L_1..T-1": float(np.mean(bound.terms[:, 1:].sum(axis=1, dtype=np.float64))),
        "L_T": float(np.mean(bound.prior, dtype=np.float64)),
    }


def save_bpd_report(out, bound: Bound, summary: dict, about: dict) -> list[Path]:
    """{out}/bpd.json (`about` the run, the summary, every image's total, the mean term and
    MSE per t) and {out}/bpd_terms.png (the mean term against t)."""
    from .atomic import write_json
    from .plots import Series, line_chart, save_charts

    out = Path(out)
    T = bound.terms.shape[1]
    mean_terms = bound.terms.mean(axis=0, dtype=np.float64)
    report = write_json(
        out / "bpd.json",
        {
            **about,
            "T": T,
            **summary,
            "total_per_image": bound.total.tolist(),
            "mean_term_per_t": mean_terms.tolist(),
            "mean_mse_per_t": bound.mse.mean(axis=0, dtype=np.float64).tolist(),
        },
    )
    chart = line_chart(
        [Series(np.arange(T), mean_terms)],
        title=f"terms of the bound, {summary['bpd']:.3f} bits/dim in all",
        xlabel="t (0: decoder)",
        ylabel="bits/dim",
        log_y=True,
    )
    return [report, save_charts([chart], out / "bpd_terms.png")]


# --- rate and distortion


class RdRow(NamedTuple):
    """One row of the paper's rate-distortion table (Table 4)."""

    reverse_time: int
    rate: float  # cumulative bits/dim
    distortion: float  # RMSE on [0, 255]


def table_times(T: int) -> list[int]:
    """The paper's reverse times 1000, 900, ..., 100 (T, 0.9 T, ..., 0.1 T for another T)."""
    return sorted({max(1, round(T * k / 10)) for k in range(1, 11)}, reverse=True)


def rd_table(rd: RateDistortion) -> list[RdRow]:
    """Rate and distortion at the paper's reverse times (`table_times`)."""
    return [RdRow(r, float(rd.rate[r - 1]), float(rd.distortion[r - 1])) for r in table_times(len(rd.reverse_time))]


def save_rd_report(out, rd: RateDistortion, rows: list[RdRow], n: int) -> list[Path]:
    """{out}/rd.json (the table and both curves, over `n` images) and {out}/rd.png (three charts)."""
    from .atomic import write_json
    from .plots import Series, line_chart, save_charts

    out = Path(out)
    report = write_json(
        out / "rd.json",
        {
            "n": n,
            "T": len(rd.reverse_time),
            "table": [row._asdict() for row in rows],
            "rate": rd.rate.tolist(),
            "distortion": rd.distortion.tolist(),
        },
    )
    charts = [
        line_chart(
            [
                Series(rd.rate, rd.distortion),
                Series([r.rate for r in rows], [r.distortion for r in rows], "the table's times", points=True),
            ],
            title="distortion against rate",
            xlabel="rate (bits/dim)",
            ylabel="RMSE [0, 255]",
        ),
        line_chart(
            [Series(rd.reverse_time, rd.rate)],
            title="rate against reverse time",
            xlabel="reverse time T - t + 1",
            ylabel="bits/dim",
        ),
        line_chart(
            [Series(rd.reverse_time, rd.distortion)],
            title="distortion against reverse time",
            xlabel="reverse time T - t + 1",
            ylabel="RMSE [0, 255]",
        ),
    ]
    return [report, save_charts(charts, out / "rd.png")]


# --- FID, KID and IS


def sample_scores(
    samples,
    ref,
    *,
    inception_weights=None,
    batch: int = 50,
    device="cpu",
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
    save_ref_stats=None,
) -> dict:
    """FID, KID and IS (torchmetrics' definitions) of the images `samples` against `ref`, on the
    FID Inception-v3's features: {samples, ref, n_samples, n_ref, fid, is, is_std} and, when `ref`
    holds images, {kid, kid_std, kid_subset_size}. Each is a folder of images or of samples_*.npz,
    or a .npz/.npy; `ref` may be an .npz of statistics (mu, sigma; n_ref 0 when it has no count).
    `seed` draws the KID subsets and the IS shuffle; `save_ref_stats` is an .npz path for the
    reference's statistics, to reuse as `ref`."""
    from tqdm import tqdm

    from .fid import (
        frechet_distance,
        inception_features,
        inception_score,
        kernel_inception_distance,
        load_images,
        load_stats,
        save_stats,
        stats_of,
    )
    from .inception import load_inception, weights_path

    path = weights_path(inception_weights)  # fail before reading any image
    ref_path = Path(ref).expanduser()
    ref_stats = load_stats(ref_path) if ref_path.suffix.lower() == ".npz" and ref_path.is_file() else None
    sample_images = load_images(samples)
    ref_images = None if ref_stats is not None else load_images(ref_path)
    net = load_inception(path, device)

    def features(images, what):
        with tqdm(total=len(images), unit="image", desc=f"Inception features, {what}") as bar:
            return inception_features(images, net, batch=batch, device=device, progress=bar.update)

    fake = features(sample_images, "samples")
    scores = {"samples": str(samples), "ref": str(ref), "n_samples": len(sample_images)}
    if ref_images is not None:
        real = features(ref_images, "reference")
        ref_stats = stats_of(real.pool)
        kid, kid_std, size = kernel_inception_distance(real.pool, fake.pool, subset_size=kid_subset_size, seed=seed)
        scores.update(kid=kid, kid_std=kid_std, kid_subset_size=size)
    scores.update(n_ref=ref_stats.n, fid=frechet_distance(ref_stats, stats_of(fake.pool)))
    scores["is"], scores["is_std"] = inception_score(fake.logits, splits=is_splits, seed=seed)
    if save_ref_stats:
        save_stats(save_ref_stats, ref_stats)
    return scores
