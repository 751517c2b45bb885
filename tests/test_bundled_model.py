"""The bundled models, `digits` and `digits_4step`: ship in the package, load with no network."""

import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest

from ddpm_jax import Diffusion
from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS
from ddpm_jax.convert.registry import BUNDLED, MODELS_DIR


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_digits_is_bundled_small_and_loads_offline(no_network):
    path = MODELS_DIR / BUNDLED["digits"]
    assert path.stat().st_size <= 10 * 2**20
    model = Diffusion.from_pretrained("digits")
    assert model.unet_config == UNET_PRESETS["digits"]
    assert model.diffusion_config == DIFFUSION_PRESETS["digits"]
    x = np.asarray(model.denoise(2, n_steps=20, key=0))
    assert x.shape == (2, 16, 16, 1) and np.isfinite(x).all()


def test_digits_is_the_cli_default():
    import argparse

    from ddpm_jax.cli import sample

    p = argparse.ArgumentParser()
    sample.add_arguments(p)
    assert p.parse_args(["--out", "x"]).model == "digits"


def test_digits_4step_is_digits_distilled_and_draws_digits_in_4_steps(no_network, monkeypatch):
    """The distilled model ships, samples its own 4-step chain by default, and what it draws
    reads as digits to bench/digits_quality.py's classifier (its bar is 0.85 of real digits'
    confidence over 1000 samples; 200 here)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from digits_quality import hidden_features, judge, train_classifier

    from ddpm_jax.data import digits_split, digits_to_images, images_to_digits

    assert (MODELS_DIR / BUNDLED["digits_4step"]).stat().st_size <= 10 * 2**20
    model = Diffusion.from_pretrained("digits_4step")
    assert model.unet_config == UNET_PRESETS["digits"]
    distilled = dataclasses.replace(DIFFUSION_PRESETS["digits"], prediction_type="v", distilled_steps=4)
    assert model.diffusion_config == distilled
    assert (model.sampler.name, model.num_timesteps) == ("ddim_trailing", 4)
    x_tr, y_tr, x_te, _ = digits_split()
    x_tr, x_te = (images_to_digits(digits_to_images(x, 16)) for x in (x_tr, x_te))
    clf = train_classifier(x_tr, y_tr)
    scores = judge(clf, images_to_digits(np.asarray(model.denoise(200, key=0))), hidden_features(clf, x_te))
    assert scores["confident"] >= 0.7 and scores["entropy"] >= 0.9, scores
