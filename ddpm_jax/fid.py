"""Sample quality: FID, KID and IS with torchmetrics, on the FID Inception's features.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to
the pool3 features of two image sets; KID (Binkowski et al. 2018) an unbiased
polynomial-kernel MMD of the same features over random subsets; IS (Salimans
et al. 2016) exp E KL(p(y|x) || p(y)) of the 1008-way logits without bias,
over 10 splits. These are torch-fidelity's choices, which the PyTorch port's
FID of the released models used. The features come from `inception.py`; the
metrics from torchmetrics' FrechetInceptionDistance, KernelInceptionDistance
and InceptionScore, fed the features directly.

Images: a folder of PNG/JPEG files, a folder of the `samples_*.npz` shards
that `ddpm-jax sample --format npz` writes, or one `.npz`/`.npy` uint8 array
(n, H, W[, C]). Reference statistics: an `.npz` holding `mu` and `sigma`
(pytorch-fid's format).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .atomic import write_with

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PREVIEW = "grid.png"  # `ddpm-jax sample`'s preview grid, not a sample


class Features(NamedTuple):
    pool: np.ndarray  # (n, 2048) float32: FID, KID
    logits: np.ndarray  # (n, 1008) float32, without bias: IS


class Stats(NamedTuple):
    """A Gaussian fitted to features: mean (d,), covariance (d, d) (ddof 1), and the
    number of images (0 when a statistics file does not say)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def _array_images(x: np.ndarray, source) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{source}: expected uint8 images (n, H, W) or (n, H, W, 1|3), got {x.dtype} {x.shape}")
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _npz_images(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        name = "images" if "images" in f.files else (f.files[0] if f.files else None)
        if name is None:
            raise ValueError(f"{path} holds no arrays")
        return _array_images(f[name], path)


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not a readable image ({err})") from err


def load_images(spec) -> np.ndarray:
    """(n, H, W, 3) uint8 from a folder of images or of sample shards, or an array file."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".npy":
            return _array_images(np.load(path, allow_pickle=False), path)
        if path.suffix.lower() == ".npz":
            return _npz_images(path)
        raise ValueError(f"{path}: expected a folder of images, a .npz or a .npy file")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    shards = sorted(path.glob("samples_*.npz"))
    if shards:
        return np.concatenate([_npz_images(s) for s in shards])
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p != path / PREVIEW)
    if not files:
        raise ValueError(f"no .png/.jpg/.jpeg images and no samples_*.npz in {path}")
    images = [_read_image(f) for f in files]
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise ValueError(f"the images in {path} differ in size ({sorted(sizes)[:4]}); FID compares images of one size")
    return np.stack(images)


def inception_features(
    images: np.ndarray, net: nn.Module, *, batch: int = 50, device="cpu", progress: Callable[[int], None] | None = None
) -> Features:
    """Pool3 features and logits of (n, H, W, 3) uint8 images, `batch` at a time."""
    pools, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch].transpose(0, 3, 1, 2)))
            pool, logit = net(x.to(device))
            pools.append(pool.cpu().numpy())
            logits.append(logit.cpu().numpy())
            if progress is not None:
                progress(len(x))
    return Features(np.concatenate(pools), np.concatenate(logits))


def stats_of(pool: np.ndarray) -> Stats:
    pool = np.asarray(pool, np.float64)
    if len(pool) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(pool)}")
    return Stats(pool.mean(axis=0), np.cov(pool, rowvar=False), len(pool))


def save_stats(path, stats: Stats):
    """`mu`, `sigma` (pytorch-fid's keys) and `n` in an .npz, written atomically."""
    return write_with(path, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma, n=stats.n))


def load_stats(path) -> Stats | None:
    """The statistics in an .npz with `mu` and `sigma`; None if it holds no such keys."""
    with np.load(Path(path).expanduser(), allow_pickle=False) as f:
        if not {"mu", "sigma"} <= set(f.files):
            return None
        mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
        n = int(f["n"]) if "n" in f.files else 0
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} must be (d,) and (d, d)")
    return Stats(mu, sigma, n)


@contextmanager
def _quiet():
    """Without torchmetrics' warnings about feature buffers and a compute before any update:
    here the features are computed beforehand and the states set on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*was called before the ``update``", category=UserWarning)
        yield


class _Given(nn.Module):
    """Stands in for torchmetrics' feature network: the features are computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def frechet_distance(a: Stats, b: Stats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), by torchmetrics' FID.

    The metric keeps running sums of the features; they are set from the
    statistics (sum = n mu, sum of outer products = (n - 1) S + n mu mu^T).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if a.mu.shape != b.mu.shape:
        raise ValueError(f"the two sets' features differ in size: {a.mu.shape} vs {b.mu.shape}")
    metric = FrechetInceptionDistance(feature=_Given(a.mu.shape[0]))
    for side, s in (("real", a), ("fake", b)):
        n = max(s.n, 2)  # any count >= 2 gives back the same mu and S
        mu = torch.from_numpy(np.asarray(s.mu, np.float64))
        setattr(metric, f"{side}_features_sum", n * mu)
        setattr(
            metric,
            f"{side}_features_cov_sum",
            (n - 1) * torch.from_numpy(np.asarray(s.sigma, np.float64)) + n * torch.outer(mu, mu),
        )
        setattr(metric, f"{side}_features_num_samples", torch.tensor(n))
    metric.orig_dtype = torch.float64  # what `update` would have recorded
    with _quiet():
        return float(metric.compute())


def kernel_inception_distance(
    pool_a, pool_b, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float, int]:
    """KID's mean and standard deviation over `subsets` random subsets, and the subset size used
    (at most the size of the smaller set)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(pool_a), len(pool_b))
    with _quiet():
        metric = KernelInceptionDistance(feature=_Given(pool_a.shape[1]), subsets=subsets, subset_size=size)
    metric.update(torch.from_numpy(np.asarray(pool_a, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(pool_b, np.float64)), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def inception_score(logits, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS's mean and standard deviation over `splits` splits of the shuffled images."""
    from torchmetrics.image.inception import InceptionScore

    with _quiet():
        metric = InceptionScore(feature=_Given(logits.shape[1]), splits=splits)
    metric.update(torch.from_numpy(np.asarray(logits, np.float64)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
