"""Every benchmark script in its quickest mode on a tiny model: seconds each, so a
refactor cannot silently break them. Their numbers are not checked, only that
they run through the public API and report what they say they do."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ONE_LEVEL_UNET, tiny_diffusion_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A one-level 8x8 grayscale model over a 10-step process, saved as params."""
    path = tmp_path_factory.mktemp("bench") / "tiny.safetensors"
    tiny_diffusion_model(ONE_LEVEL_UNET, T=10).save_pretrained(path)
    return str(path)


def bench(script, *args, timeout=300) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("train", [False, True], ids=["sampling", "training"])
def test_scaling(tiny_path, train):
    out = bench("scaling.py", "--model", tiny_path, "--devices", "1,2", "--batch", 4, "--steps", 2, "--reps", 1,
                *(["--train"] if train else []))
    rows = re.findall(r"^\s+(\d)\s+([\d.]+)\s", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1]) > 0 for r in rows), out


def test_first_sample(tiny_path):
    out = bench("first_sample.py", "--model", tiny_path, "--runs", 1)
    assert re.search(r"cold \(empty compilation cache\): [\d.]+ s", out) and "with the cache: median" in out, out


def test_digits_quality(tiny_path, tmp_path):
    out = bench("digits_quality.py", "--model", tiny_path, "--n", 20, "--batch", 20, "--json", tmp_path / "q.json")
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["samples"]["n"] == 20 and 0 <= result["samples"]["confident"] <= 1
    assert result["heldout_real"]["n"] == 450 and "targets" in result and "held-out real digits" in out
