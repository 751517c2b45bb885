"""`ddpm-jax eval`: measure a model as the paper did.

    bpd  the variational bound in bits/dim (the release's calc_bpd_loop) on a data set
    rd   progressive coding: rate and distortion against reverse time (paper sec. 4.3)
    fid  FID, KID and IS of samples against reference images or statistics

Data for bpd/rd: `digits` (the bundled model's held-out split), `digits-train`,
an image folder or a .npy/.npz array. Images not on the 8-bit grid (the digits
pipeline upsamples with bicubic) are quantised to uint8 first, as the bound's
decoder is discrete.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
DIGITS_HELD_OUT, DIGITS_TRAIN = "digits", "digits-train"


def add_arguments(p):
    sub = p.add_subparsers(dest="metric", required=True, metavar="METRIC")
    bpd = sub.add_parser("bpd", help="the variational bound in bits/dim",
                         description="The variational bound (eq. 5) of each image in bits/dim.")
    _bound_arguments(bpd)
    rd = sub.add_parser("rd", help="progressive coding: rate and distortion against reverse time",
                        description="Rate (cumulative bits/dim) and distortion (RMSE on [0, 255]) "
                                    "against reverse time, from the per-t terms of the bound.")
    _bound_arguments(rd)
    rd.add_argument("--bound", help="a bound.npz written by `eval bpd --out` (then nothing is recomputed)")
    fid = sub.add_parser("fid", help="FID, KID and IS of samples",
                         description="FID, KID and IS (torchmetrics) on the FID Inception-v3's features.")
    fid.add_argument("--samples", required=True,
                     help="a folder of images or of samples_*.npz (ddpm-jax sample), or a .npz/.npy")
    fid.add_argument("--ref", required=True,
                     help="reference images (same kinds), or an .npz of statistics (mu, sigma)")
    fid.add_argument("--inception-weights",
                     help="pt_inception-2015-12-05-6726825d.pth (default: $DDPM_JAX_INCEPTION_WEIGHTS)")
    fid.add_argument("--batch", type=int, default=50, help="images per Inception call")
    fid.add_argument("--device", default="cpu", help="torch device for the Inception network, e.g. cuda")
    fid.add_argument("--kid-subset-size", type=int, default=1000)
    fid.add_argument("--is-splits", type=int, default=10)
    fid.add_argument("--seed", type=int, default=0, help="the KID subsets and the IS shuffle")
    fid.add_argument("--save-ref-stats", help="write the reference's statistics to this .npz, for reuse")
    fid.add_argument("--out", help="folder for fid.json")


def _bound_arguments(p):
    p.add_argument("--model", default="digits", help="a bundled or pretrained name, or a .safetensors path")
    p.add_argument("--data", default=DIGITS_HELD_OUT,
                   help=f"{DIGITS_HELD_OUT} (held-out split), {DIGITS_TRAIN}, an image folder or a .npy/.npz")
    p.add_argument("--n", type=int, help="only the first N images")
    p.add_argument("--batch", type=int, default=64, help="images per batch (all devices together)")
    p.add_argument("--seed", type=int, default=0, help="the noise of x_t ~ q(x_t | x_0)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x_0 to [-1, 1]")
    p.add_argument("--out", help="output folder")


def run(args) -> int:
    return {"bpd": run_bpd, "rd": run_rd, "fid": run_fid}[args.metric](args)


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


def compute_bound(model, images: np.ndarray, *, batch: int, seed: int, clip: bool):
    """The bound of every image, in batches of equal size (one compilation): image i keeps
    sample index i, so the result does not depend on `batch` or the devices."""
    import jax
    from tqdm import tqdm

    from .likelihood import Bound

    n, devices = len(images), jax.local_device_count()
    size = math.ceil(n / math.ceil(n / batch))
    size = math.ceil(size / devices) * devices
    parts = []
    with tqdm(total=n, unit="image", desc=f"bound, T={model.num_timesteps}") as bar:
        for start in range(0, n, size):
            x = images[start:start + size]
            count = len(x)
            if count < size:  # pad with copies of the first image; their results are dropped
                x = np.concatenate([x, np.repeat(x[:1], size - count, axis=0)])
            b = model.bpd(x, key=seed, clip=clip, first_index=start)
            parts.append(Bound(*(np.asarray(a)[:count] for a in b)))
            bar.update(count)
    return Bound(*(np.concatenate(a) for a in zip(*parts)))


def _bound_for(args):
    import jax

    from .compile_cache import enable_compilation_cache
    from .pipeline import Diffusion, _check_int
    from .sharding import data_mesh

    batch = _check_int("--batch", args.batch, 1, 10**6)
    enable_compilation_cache()
    mesh = data_mesh() if jax.local_device_count() > 1 else None
    model = Diffusion.from_pretrained(args.model, mesh=mesh)
    h, _, c = model.image_shape
    images = eval_images(args.data, h, c)
    if args.n is not None:
        images = images[:_check_int("--n", args.n, 1, len(images))]
    bound = compute_bound(model, images, batch=batch, seed=args.seed, clip=not args.no_clip)
    if args.out:
        from .atomic import write_with

        write_with(Path(args.out) / "bound.npz", lambda f: np.savez(f, **bound._asdict()))
    return bound


def summarize_bound(bound) -> dict:
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


def run_bpd(args) -> int:
    from .atomic import write_json
    from .plots import Series, line_chart, save_charts

    bound = _bound_for(args)
    s = summarize_bound(bound)
    T = bound.terms.shape[1]
    print(f"{args.model} on {args.data}: {s['bpd']:.4f} +- {s['stderr']:.4f} bits/dim "
          f"(mean +- standard error over {s['n']} images)")
    print(f"  L_0 (decoder) {s['L_0']:.4f} | L_1..L_{T - 1} {s['L_1..T-1']:.4f} | L_{T} (prior) {s['L_T']:.3g}")
    if args.out:
        out = Path(args.out)
        write_json(out / "bpd.json", {
            "model": args.model, "data": args.data, "seed": args.seed, "clip": not args.no_clip,
            "T": T, **s,
            "total_per_image": bound.total.tolist(),
            "mean_term_per_t": bound.terms.mean(axis=0, dtype=np.float64).tolist(),
            "mean_mse_per_t": bound.mse.mean(axis=0, dtype=np.float64).tolist(),
        })
        t = np.arange(T)
        chart = line_chart([Series(t, bound.terms.mean(axis=0, dtype=np.float64))],
                           title=f"terms of the bound, {s['bpd']:.3f} bits/dim in all", xlabel="t (0: decoder)",
                           ylabel="bits/dim", log_y=True)
        save_charts([chart], out / "bpd_terms.png")
        print(f"wrote {out / 'bpd.json'}, {out / 'bound.npz'} and {out / 'bpd_terms.png'}")
    return 0


def table_times(T: int) -> list[int]:
    """The paper's reverse times 1000, 900, ..., 100 (T, 0.9 T, ..., 0.1 T for another T)."""
    return sorted({max(1, round(T * k / 10)) for k in range(1, 11)}, reverse=True)


def run_rd(args) -> int:
    from .atomic import write_json
    from .likelihood import Bound, rate_distortion
    from .plots import Series, line_chart, save_charts

    if args.bound:
        path = Path(args.bound).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--bound {path}: no such file (write one with `ddpm-jax eval bpd --out DIR`)")
        with np.load(path, allow_pickle=False) as f:
            missing = set(Bound._fields) - set(f.files)
            if missing:
                raise ValueError(f"--bound {path} lacks {sorted(missing)}; expected a bound.npz of `eval bpd`")
            bound = Bound(*(f[k] for k in Bound._fields))
    else:
        bound = _bound_for(args)
    rd = rate_distortion(bound)
    T = len(rd.reverse_time)
    rows = [(r, float(rd.rate[r - 1]), float(rd.distortion[r - 1])) for r in table_times(T)]
    print(f"{'reverse time':>12}  {'rate (bits/dim)':>15}  {'distortion (RMSE [0, 255])':>26}")
    for r, rate, dist in rows:
        print(f"{r:>12}  {rate:>15.5f}  {dist:>26.5f}")
    if args.out:
        out = Path(args.out)
        write_json(out / "rd.json", {
            "n": len(bound.total), "T": T,
            "table": [{"reverse_time": r, "rate": rate, "distortion": dist} for r, rate, dist in rows],
            "rate": rd.rate.tolist(), "distortion": rd.distortion.tolist(),
        })
        charts = [
            line_chart([Series(rd.rate, rd.distortion),
                        Series([r[1] for r in rows], [r[2] for r in rows], "the table's times", points=True)],
                       title="distortion against rate", xlabel="rate (bits/dim)", ylabel="RMSE [0, 255]"),
            line_chart([Series(rd.reverse_time, rd.rate)], title="rate against reverse time",
                       xlabel="reverse time T - t + 1", ylabel="bits/dim"),
            line_chart([Series(rd.reverse_time, rd.distortion)], title="distortion against reverse time",
                       xlabel="reverse time T - t + 1", ylabel="RMSE [0, 255]"),
        ]
        save_charts(charts, out / "rd.png")
        print(f"wrote {out / 'rd.json'} and {out / 'rd.png'}")
    return 0


def run_fid(args) -> int:
    from tqdm import tqdm

    from .atomic import write_json
    from .fid import (frechet_distance, inception_features, inception_score, kernel_inception_distance,
                      load_images, load_stats, save_stats, stats_of)
    from .inception import load_inception, weights_path
    from .pipeline import _check_int

    batch = _check_int("--batch", args.batch, 1, 10**5)
    path = weights_path(args.inception_weights)  # fail before reading any image
    ref_path = Path(args.ref).expanduser()
    ref_stats = load_stats(ref_path) if ref_path.suffix.lower() == ".npz" and ref_path.is_file() else None
    samples = load_images(args.samples)
    ref_images = None if ref_stats is not None else load_images(ref_path)
    net = load_inception(path, args.device)

    def features(images, what):
        with tqdm(total=len(images), unit="image", desc=f"Inception features, {what}") as bar:
            return inception_features(images, net, batch=batch, device=args.device, progress=bar.update)

    fake = features(samples, "samples")
    result = {"samples": str(args.samples), "ref": str(args.ref), "n_samples": len(samples)}
    if ref_images is not None:
        real = features(ref_images, "reference")
        ref_stats = stats_of(real.pool)
        kid, kid_std, size = kernel_inception_distance(real.pool, fake.pool, subset_size=args.kid_subset_size,
                                                       seed=args.seed)
        result.update(kid=kid, kid_std=kid_std, kid_subset_size=size)
    result.update(n_ref=ref_stats.n, fid=frechet_distance(ref_stats, stats_of(fake.pool)))
    result["is"], result["is_std"] = inception_score(fake.logits, splits=args.is_splits, seed=args.seed)
    against = f"{ref_stats.n} reference images" if ref_stats.n else "reference statistics"
    print(f"FID {result['fid']:.4f} ({len(samples)} samples vs {against})")
    if "kid" in result:
        print(f"KID {result['kid']:.6f} +- {result['kid_std']:.6f} (subsets of {result['kid_subset_size']})")
    else:
        print("KID: needs reference images, not statistics")
    print(f"IS {result['is']:.4f} +- {result['is_std']:.4f} ({args.is_splits} splits)")
    if args.save_ref_stats:
        save_stats(args.save_ref_stats, ref_stats)
    if args.out:
        write_json(Path(args.out) / "fid.json", result)
    return 0
