"""The bundled `digits` model: ships in the package, loads with no network."""

import socket

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
