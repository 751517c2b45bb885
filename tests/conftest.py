"""Shared fixtures: a tiny UNet and process so tests run in seconds on CPU."""

import os
import tempfile
from pathlib import Path

import jax
import pytest

from ddpm_jax import Diffusion
from ddpm_jax.compile_cache import enable_compilation_cache
from ddpm_jax.unet import init_params

from .helpers import TINY_DIFFUSION, TINY_UNET

# Downloads, converted params and compiled programs of the tests stay out of
# the user's cache (tests that need their own cache override this).
os.environ.setdefault("DDPM_JAX_CACHE", tempfile.mkdtemp(prefix="ddpm_jax_test_cache_"))
# Gradio's files of this process's servers: its own folder, so that test processes
# running side by side (pytest -n) never serve or delete each other's files.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="ddpm_jax_test_gradio_")
# One persistent compilation cache for the whole run (the commands the tests
# start use it too): a program that another test or process compiled loads
# instead of compiling again.
enable_compilation_cache()
# This run's own folder, shared by the test processes of `pytest -n` (they inherit the variable).
RUN_DIR = Path(os.environ.setdefault("DDPM_JAX_TEST_RUN_DIR", tempfile.mkdtemp(prefix="ddpm_jax_test_run_")))


def params_once_per_run(name: str, make) -> dict:
    """make()'s params, computed by one test process of the run and read back, bit for bit, by the
    others (`pytest -n`): a process that gets here second waits for the first instead of compiling
    the same program beside it on the same cores."""
    from filelock import FileLock
    from safetensors.numpy import load_file, save_file

    from ddpm_jax.weights import flatten_params, unflatten_params

    path = RUN_DIR / f"{name}.safetensors"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            save_file({k: jax.device_get(v) for k, v in flatten_params(make()).items()}, f"{path}.tmp")
            os.replace(f"{path}.tmp", path)
        return jax.tree.map(jax.numpy.asarray, unflatten_params(load_file(path)))


@pytest.fixture(autouse=True)
def _xla_flags_as_the_run_started():
    """XLA_FLAGS back as it was after each test. A command run in this process (`main([...])`)
    adds the fast CPU path's flags to os.environ, too late to apply here; and JAX's persistent
    cache hashes XLA_FLAGS into its keys, so every test after it would miss the programs that
    the other test processes compiled."""
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before


@pytest.fixture(scope="session")
def tiny_params():
    return params_once_per_run("tiny_params", lambda: init_params(TINY_UNET, jax.random.key(1)))


@pytest.fixture(scope="session")
def tiny_model(tiny_params):
    return Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, chunk_size=8)


@pytest.fixture(scope="session")
def saved(tiny_model, tmp_path_factory):
    """The tiny model written to a ddpm_jax .safetensors file."""
    path = tmp_path_factory.mktemp("saved") / "tiny.safetensors"
    tiny_model.save_pretrained(path)
    return path


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed, whatever the environment says (the servers are loopback)."""
    for var in ("HF_HUB_OFFLINE", "DDPM_JAX_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def highest_precision():
    """Matmuls and convolutions at full float32 precision, for parity against PyTorch."""
    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    yield
    jax.config.update("jax_default_matmul_precision", old)


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The demo's model registry over the tiny model (and a choice that cannot load)."""
    from .helpers import make_tiny_model, tiny_models

    return tiny_models(make_tiny_model(tmp_path_factory.mktemp("demo") / "tiny.safetensors"))
