"""Shared fixtures: a tiny UNet and process so tests run in seconds on CPU."""

import os
import tempfile

import jax
import pytest

from ddpm_jax import Diffusion, DiffusionConfig, UNetConfig
from ddpm_jax.unet import init_params

# Downloads, converted params and compiled programs of the tests stay out of
# the user's cache (tests that need their own cache override this).
os.environ.setdefault("DDPM_JAX_CACHE", tempfile.mkdtemp(prefix="ddpm_jax_test_cache_"))

TINY_UNET = UNetConfig(
    resolution=8, in_channels=1, out_ch=1, ch=32, ch_mult=(1, 2),
    num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
)
TINY_DIFFUSION = DiffusionConfig(num_diffusion_timesteps=40, model_var_type="fixedlarge")


@pytest.fixture(scope="session")
def tiny_params():
    return init_params(TINY_UNET, jax.random.key(1))


@pytest.fixture(scope="session")
def tiny_model(tiny_params):
    return Diffusion(TINY_DIFFUSION, TINY_UNET, tiny_params, chunk_size=8)


@pytest.fixture(scope="session")
def saved(tiny_model, tmp_path_factory):
    """The tiny model written to a ddpm_jax .safetensors file."""
    path = tmp_path_factory.mktemp("saved") / "tiny.safetensors"
    tiny_model.save_pretrained(path)
    return path
