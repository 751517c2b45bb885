"""ddpm_jax's FID Inception-v3 against torch-fidelity's, on the same weights and images.

torch-fidelity imports torchvision, which does not install beside the CPU
torch here, so this check runs in an environment of its own:

    python -m venv /tmp/fidelity && echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/fidelity/lib/python3.11/site-packages/ddpm.pth
    /tmp/fidelity/bin/pip install --no-deps torch-fidelity==0.4.0
    /tmp/fidelity/bin/python bench/inception_parity.py [--weights pt_inception-2015-12-05-6726825d.pth]

Only torch-fidelity's Inception module is imported (its package __init__,
which imports torchvision, is bypassed). Without --weights both networks get
the same random weights (`tests.helpers.random_inception_state`). Prints the
largest differences of the pool3 features and of the unbiased logits.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddpm_jax.inception import load_inception  # noqa: E402
from tests.helpers import random_inception_state  # noqa: E402


def fidelity_inception():
    """torch_fidelity.feature_extractor_inceptionv3 without running torch_fidelity/__init__.py."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        sys.exit("torch-fidelity is not installed here: see this script's docstring")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="the standard weights file (default: random weights)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="input images are size x size")
    args = p.parse_args()
    extractor = fidelity_inception()
    path = args.weights
    if path is None:
        path = Path(tempfile.mkdtemp()) / "random_inception.pth"
        torch.save(random_inception_state(0), path)
    ours = load_inception(path)
    theirs = extractor("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (args.n, 3, args.size, args.size), dtype=np.uint8))
    with torch.no_grad():
        pool, logits = ours(images)
        pool_ref, logits_ref = theirs(images)
    for name, a, b in (("pool3", pool, pool_ref), ("logits_unbiased", logits, logits_ref)):
        diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
        print(
            f"{name}: max |ours - torch-fidelity| = {diff:.3g}, max |torch-fidelity| = {scale:.3g}, "
            f"relative {diff / scale:.3g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
