"""Sample quality of a digits model, judged by a digit classifier (FID needs Inception).

A scikit-learn MLP (one hidden layer of 64 ReLU units) is trained on the
training split of scikit-learn's digits (the split `--data digits` trains on)
and judges:

- confident: the fraction of images it classifies with max probability >= 0.9;
- entropy: the entropy of the predicted-class histogram / log 10 (1 = uniform);
- frechet: the Fréchet distance between the MLP's hidden-layer activations of
  the images and of the held-out real digits (as FID, on 64-d features).

Every image is compared as the model sees digits: real digits go through the
training pipeline (8x8 -> 16x16 bicubic, [-1, 1]) and every image, real or
sampled, is area-averaged back to 8x8 in [0, 16] before the classifier.
The floor is the same distance between training and held-out real digits,
with as many training digits as samples (FD shrinks as its sample grows).

    python bench/digits_quality.py                      # bundled `digits`, 1000 samples, all T steps
    python bench/digits_quality.py --model run/ema.safetensors --n 500 --steps 1000
    python bench/digits_quality.py --model digits_4step                # a distilled model: its own 4 steps
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import linalg

from ddpm_jax import samplers

CONFIDENT = 0.9


def train_classifier(x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=2000, random_state=seed)
    return clf.fit(x.reshape(len(x), -1) / 16.0, y)


def hidden_features(clf, x: np.ndarray) -> np.ndarray:
    """The MLP's hidden ReLU activations, (n, 64)."""
    h = x.reshape(len(x), -1) / 16.0 @ clf.coefs_[0] + clf.intercepts_[0]
    return np.maximum(h, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), as in FID."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # singular product: offset as pytorch-fid does
        eps = 1e-6 * np.eye(len(s_a))
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2.0 * covmean))


def judge(clf, x8: np.ndarray, ref_features: np.ndarray) -> dict:
    """confident fraction, class-histogram entropy / log 10, Fréchet distance to ref."""
    probs = clf.predict_proba(x8.reshape(len(x8), -1) / 16.0)
    hist = np.bincount(probs.argmax(1), minlength=10) / len(x8)
    nz = hist[hist > 0]
    return {
        "n": int(len(x8)),
        "confident": float((probs.max(1) >= CONFIDENT).mean()),
        "entropy": float(-(nz * np.log(nz)).sum() / np.log(10)),
        "frechet": frechet_distance(hidden_features(clf, x8), ref_features),
        "class_histogram": [round(float(h), 4) for h in hist],
    }


def sample_digits(
    model_name: str,
    n: int,
    steps: int | None,
    batch: int,
    seed: int,
    sampler: str | None = None,
    eta: float | None = None,
    clip: bool = True,
):
    """n samples (`sampler` over `steps` respaced steps or all T; None: the model's own chain) as
    8x8 digits in [0, 16], the sampler's name, its steps and seconds."""
    from ddpm_jax import Diffusion
    from ddpm_jax.data import images_to_digits

    model = Diffusion.from_pretrained(model_name, chunk_size=50, steps=steps, sampler=sampler, eta=eta)
    if model.image_shape[-1] != 1:
        raise SystemExit(f"{model_name} makes {model.image_shape} images; this benchmark needs grayscale")
    t0 = time.perf_counter()
    out = []
    for first in range(0, n, batch):
        k = min(batch, n - first)
        x = model.denoise(k, key=seed, first_index=first, clip=clip)
        out.append(np.asarray(x))
        print(f"  sampled {first + k}/{n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    seconds = time.perf_counter() - t0
    return images_to_digits(np.concatenate(out)), model.sampler.name, model.num_timesteps, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="digits", help="bundled name or .safetensors path")
    p.add_argument("--n", type=int, default=1000, help="samples to judge")
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps: the chain respaced to this many (default: all T)"
    )
    p.add_argument(
        "--sampler",
        choices=samplers.names(),
        default=None,
        help="default: the model's own chain (DDPM over all T; a distilled model's N steps of ddim_trailing)",
    )
    p.add_argument("--eta", type=float, default=None, help="DDIM's eta (default 0)")
    p.add_argument(
        "--no-clip", dest="clip", action="store_false", help="do not clip the predicted x_0 to [-1, 1] at each step"
    )
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    from ddpm_jax.data import digits_split, digits_to_images, images_to_digits

    x_tr, y_tr, x_te, y_te = digits_split()
    # Real digits as the model sees them: through the 16x16 training pipeline and back.
    x_tr, x_te = (images_to_digits(digits_to_images(x, 16)) for x in (x_tr, x_te))
    clf = train_classifier(x_tr, y_tr)
    accuracy = float(clf.score(x_te.reshape(len(x_te), -1) / 16.0, y_te))
    ref = hidden_features(clf, x_te)

    samples, sampler, steps, seconds = sample_digits(
        args.model, args.n, args.steps, args.batch, args.seed, args.sampler, args.eta, args.clip
    )
    real = judge(clf, x_te, ref)
    # The floor: training digits vs held-out. The Fréchet distance shrinks as
    # its sample grows, so the floor uses as many training digits as there are
    # samples (a fixed random subset); the whole split's is reported beside it.
    subset = np.random.default_rng(0).permutation(len(x_tr))[: args.n]
    real["frechet"] = frechet_distance(hidden_features(clf, x_tr[subset]), ref)
    real["frechet_floor_n"] = int(len(subset))
    real["frechet_all_training_digits"] = frechet_distance(hidden_features(clf, x_tr), ref)
    model = judge(clf, samples, ref)
    result = {
        "model": args.model,
        "steps": steps,
        "sampler": sampler,
        "eta": args.eta,
        "clip": args.clip,
        "seed": args.seed,
        "classifier_heldout_accuracy": accuracy,
        "heldout_real": real,
        "samples": model,
        "sampling_seconds": round(seconds, 1),
        "targets": {
            "confident >= 0.9 x real": model["confident"] >= 0.9 * real["confident"],
            "entropy >= 0.95": model["entropy"] >= 0.95,
            "frechet <= 2 x floor": model["frechet"] <= 2.0 * real["frechet"],
        },
    }
    print(f"classifier: MLP(64) held-out accuracy {accuracy:.4f} on {len(x_te)} digits")
    print(f"{'':24}{'confident':>10}{'entropy':>10}{'frechet':>10}")
    print(
        f"{'held-out real digits':24}{real['confident']:10.4f}{real['entropy']:10.4f}"
        f"{real['frechet']:10.3f}  (frechet: {len(subset)} training vs held-out digits = the floor; "
        f"all {len(x_tr)}: {real['frechet_all_training_digits']:.3f})"
    )
    print(
        f"{'samples (' + str(args.n) + ')':24}{model['confident']:10.4f}{model['entropy']:10.4f}"
        f"{model['frechet']:10.3f}  ({sampler}, {steps} steps, "
        f"{'' if args.clip else 'unclipped, '}{seconds:.0f} s)"
    )
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["targets"].items()))
    if args.json:
        from ddpm_jax.atomic import write_json

        write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
