"""`ddpm-jax eval`: measure a model as the paper did (see `ddpm_jax/evaluation.py`).

bpd  the variational bound in bits/dim (the release's calc_bpd_loop) on a data set
rd   progressive coding: rate and distortion against reverse time (paper sec. 4.3)
fid  FID, KID and IS of samples against reference images or statistics
"""

from __future__ import annotations

from pathlib import Path

from ..evaluation import DIGITS_HELD_OUT, DIGITS_TRAIN
from .common import add_model, add_out, add_seed, load_model


def add_arguments(p):
    sub = p.add_subparsers(dest="metric", required=True, metavar="METRIC")
    bpd = sub.add_parser(
        "bpd",
        help="the variational bound in bits/dim",
        description="The variational bound (eq. 5) of each image in bits/dim.",
    )
    _bound_arguments(bpd)
    rd = sub.add_parser(
        "rd",
        help="progressive coding: rate and distortion against reverse time",
        description="Rate (cumulative bits/dim) and distortion (RMSE on [0, 255]) "
        "against reverse time, from the per-t terms of the bound.",
    )
    _bound_arguments(rd)
    rd.add_argument("--bound", help="a bound.npz written by `eval bpd --out` (then nothing is recomputed)")
    fid = sub.add_parser(
        "fid",
        help="FID, KID and IS of samples",
        description="FID, KID and IS (torchmetrics) on the FID Inception-v3's features.",
    )
    fid.add_argument(
        "--samples", required=True, help="a folder of images or of samples_*.npz (ddpm-jax sample), or a .npz/.npy"
    )
    fid.add_argument("--ref", required=True, help="reference images (same kinds), or an .npz of statistics (mu, sigma)")
    fid.add_argument(
        "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: $DDPM_JAX_INCEPTION_WEIGHTS)"
    )
    fid.add_argument("--batch", type=int, default=50, help="images per Inception call")
    fid.add_argument("--device", default="cpu", help="torch device for the Inception network, e.g. cuda")
    fid.add_argument("--kid-subset-size", type=int, default=1000)
    fid.add_argument("--is-splits", type=int, default=10)
    add_seed(fid, "the KID subsets and the IS shuffle")
    fid.add_argument("--save-ref-stats", help="write the reference's statistics to this .npz, for reuse")
    add_out(fid, "folder for fid.json", required=False)


def _bound_arguments(p):
    add_model(p)
    p.add_argument(
        "--data",
        default=DIGITS_HELD_OUT,
        help=f"{DIGITS_HELD_OUT} (held-out split), {DIGITS_TRAIN}, an image folder or a .npy/.npz",
    )
    p.add_argument("--n", type=int, help="only the first N images")
    p.add_argument("--batch", type=int, default=64, help="images per batch (all devices together)")
    add_seed(p, "the noise of x_t ~ q(x_t | x_0)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x_0 to [-1, 1]")
    add_out(p, required=False)


def run(args) -> int:
    return {"bpd": run_bpd, "rd": run_rd, "fid": run_fid}[args.metric](args)


def _bound_for(args):
    from ..atomic import refuse_existing
    from ..checks import check_int
    from ..evaluation import compute_bound, eval_images, save_bound

    batch = check_int("--batch", args.batch, 1, 10**6)
    if args.out:  # what this command would write: refused now, not after the work
        names = ["bound.npz", *(["bpd.json", "bpd_terms.png"] if args.metric == "bpd" else ["rd.json", "rd.png"])]
        refuse_existing([Path(args.out) / name for name in names])
    model = load_model(args.model, args.out, sharded=True)
    h, _, c = model.image_shape
    images = eval_images(args.data, h, c)
    if args.n is not None:
        images = images[: check_int("--n", args.n, 1, len(images))]
    bound = compute_bound(model, images, batch=batch, seed=args.seed, clip=not args.no_clip)
    if args.out:
        save_bound(Path(args.out) / "bound.npz", bound)
    return bound


def run_bpd(args) -> int:
    from ..evaluation import save_bpd_report, summarize_bound

    bound = _bound_for(args)
    s = summarize_bound(bound)
    T = bound.terms.shape[1]
    print(
        f"{args.model} on {args.data}: {s['bpd']:.4f} +- {s['stderr']:.4f} bits/dim "
        f"(mean +- standard error over {s['n']} images)"
    )
    print(f"  L_0 (decoder) {s['L_0']:.4f} | L_1..L_{T - 1} {s['L_1..T-1']:.4f} | L_{T} (prior) {s['L_T']:.3g}")
    if args.out:
        about = {"model": args.model, "data": args.data, "seed": args.seed, "clip": not args.no_clip}
        report, chart = save_bpd_report(args.out, bound, s, about)
        print(f"wrote {report}, {Path(args.out) / 'bound.npz'} and {chart}")
    return 0


def run_rd(args) -> int:
    from ..evaluation import load_bound, rd_table, save_rd_report
    from ..likelihood import rate_distortion

    if args.bound and args.out:
        from ..atomic import refuse_existing

        refuse_existing([Path(args.out) / "rd.json", Path(args.out) / "rd.png"])
    bound = load_bound(args.bound, "--bound") if args.bound else _bound_for(args)
    rd = rate_distortion(bound)
    rows = rd_table(rd)
    print(f"{'reverse time':>12}  {'rate (bits/dim)':>15}  {'distortion (RMSE [0, 255])':>26}")
    for r, rate, dist in rows:
        print(f"{r:>12}  {rate:>15.5f}  {dist:>26.5f}")
    if args.out:
        report, chart = save_rd_report(args.out, rd, rows, len(bound.total))
        print(f"wrote {report} and {chart}")
    return 0


def run_fid(args) -> int:
    from ..atomic import write_json
    from ..checks import check_int
    from ..evaluation import sample_scores

    batch = check_int("--batch", args.batch, 1, 10**5)
    scores = sample_scores(
        args.samples,
        args.ref,
        inception_weights=args.inception_weights,
        batch=batch,
        device=args.device,
        kid_subset_size=args.kid_subset_size,
        is_splits=args.is_splits,
        seed=args.seed,
        save_ref_stats=args.save_ref_stats,
    )
    against = f"{scores['n_ref']} reference images" if scores["n_ref"] else "reference statistics"
    print(f"FID {scores['fid']:.4f} ({scores['n_samples']} samples vs {against})")
    if "kid" in scores:
        print(f"KID {scores['kid']:.6f} +- {scores['kid_std']:.6f} (subsets of {scores['kid_subset_size']})")
    else:
        print("KID: needs reference images, not statistics")
    print(f"IS {scores['is']:.4f} +- {scores['is_std']:.4f} ({args.is_splits} splits)")
    if args.out:
        write_json(Path(args.out) / "fid.json", scores)
    return 0
