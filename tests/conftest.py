"""Shared fixtures: a tiny UNet and process so tests run in seconds on CPU."""

import os
import tempfile
import warnings
from pathlib import Path

import jax
import pytest

from ddpm_jax import Diffusion, cpu_flags
from ddpm_jax.compile_cache import enable_compilation_cache
from ddpm_jax.unet import init_params

from .helpers import MINI_TRAIN, ONE_LEVEL_UNET, TINY_DIFFUSION, TINY_UNET

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


@pytest.fixture(scope="session", autouse=True)
def _one_compilation_cache_for_the_run(request):
    """The commands that tests run in this process (`main([...])`) add the fast CPU path's XLA
    flags to os.environ, too late to apply here. They are added once, the same way, before the
    first test: this process still runs without them (the suite tests the library as a user who
    never set them), and XLA_FLAGS, which JAX hashes into its persistent cache keys, keeps one
    value for the whole run, so a program compiled before a command ran, after it, or by another
    test process matches. (A process that a test starts gets the flags, as a command would.)

    Under `pytest -n`, every test process soon needs the tiny UNet's Flax init (`tiny_params`,
    or a test's own `init_params(TINY_UNET, ...)`: the same program), the slowest program of the
    suite to compile: it is made first, by one process while the others wait (`params_once_per_run`),
    instead of by all of them at once on the same cores."""
    jax.devices()  # the backend starts, without the flags
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cpu_flags.use_cpu_flags()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        request.getfixturevalue("tiny_params")


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


@pytest.fixture(scope="session")
def tiny_params():
    return params_once_per_run("tiny_params", lambda: init_params(TINY_UNET, jax.random.key(1)))


@pytest.fixture(scope="session")
def digits():
    """The digits' training split at 8x8 on the device: what every training test trains on."""
    from ddpm_jax.data import load_digits_images

    return jax.numpy.asarray(load_digits_images(8))


@pytest.fixture(scope="session")
def mini_train_step(digits):
    """`train.make_train_step(ONE_LEVEL_UNET, MINI_TRAIN)` (cached per config) compiled for `digits`:
    the step of test_train.py, test_trainer.py and test_train_command.py. One test process of the
    run compiles it; the others wait, then read it from the persistent compilation cache."""
    from filelock import FileLock

    from ddpm_jax.coefficients import make_coefficients
    from ddpm_jax.train import init_state, make_train_step

    step = make_train_step(ONE_LEVEL_UNET, MINI_TRAIN, None)  # as Trainer calls it: the same lru_cache entry
    with FileLock(RUN_DIR / "mini_train_step.lock"):
        jax.block_until_ready(step(init_state(ONE_LEVEL_UNET, MINI_TRAIN), digits, make_coefficients(TINY_DIFFUSION)))
    return step


@pytest.fixture(scope="session")
def tiny_model(tiny_params):
    return Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, chunk_size=8)


@pytest.fixture(scope="session")
def saved(tiny_model, tmp_path_factory):
    """The tiny model written to a ddpm_jax .safetensors file."""
    path = tmp_path_factory.mktemp("saved") / "tiny.safetensors"
    tiny_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def on_four_devices(saved):
    """part -> what `helpers.FOUR_DEVICE_SCRIPT` got for it ("samples", "bound") on 4 CPU devices,
    from `saved` (the tiny model's params). The script runs once per run, in a process of its own
    (XLA's device count is fixed when JAX starts); a test process that gets here second reads the
    first's results. A part that failed fails the test that asks for it, with its traceback."""
    import json
    import subprocess
    import sys

    import numpy as np
    from filelock import FileLock

    from .helpers import FOUR_DEVICE_SCRIPT, FOUR_DEVICES, script_env

    out = RUN_DIR / "four_devices.npz"
    with FileLock(f"{out}.lock"):
        if not out.exists():
            env = script_env(XLA_FLAGS=FOUR_DEVICES, JAX_PLATFORMS="cpu")
            env.pop("JAX_NUM_CPU_DEVICES", None)
            proc = subprocess.run(
                [sys.executable, "-c", FOUR_DEVICE_SCRIPT, str(saved), f"{out}.tmp.npz"],
                env=env,
                cwd=Path(__file__).parents[1],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            os.replace(f"{out}.tmp.npz", out)
    with np.load(out) as f:
        results = {k: f[k] for k in f.files}
    errors = json.loads(str(results.pop("errors")))

    def part(name: str) -> dict:
        assert name not in errors, errors[name]
        return {k.removeprefix(f"{name}."): v for k, v in results.items() if k.split(".")[0] == name}

    return part


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
