"""Sharded sampling: the same images on 1 or 4 devices and over 2 processes.

Each case runs in a subprocess so that the forced device count
(XLA_FLAGS=--xla_force_host_platform_device_count) stays out of this one.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from .helpers import FOUR_DEVICES, script_env


def _env(xla_flags=""):
    env = script_env(XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def _cli(args, xla_flags=""):
    return subprocess.Popen(
        [sys.executable, "-m", "ddpm_jax.cli", "sample", *args],
        env=_env(xla_flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _pngs(folder, n):
    return np.stack([np.asarray(Image.open(folder / f"{i:05}.png"), np.int16) for i in range(n)])


def test_mesh_of_four_devices_gives_the_same_samples(tiny_model, on_four_devices):
    """8 samples on a mesh of 4 devices, the chain split and resumed (a batch of 6 refused there),
    see helpers.FOUR_DEVICE_SCRIPT: run once for this and test_likelihood.py's bound."""
    four = on_four_devices("samples")["samples"]
    # One device, the params `saved` holds: the same 8 samples in batches of 3, 3, 1 and 1 (any
    # batch gives the same samples: tests/sampler_contract.py), whose programs the contract compiled.
    one = np.concatenate(
        [np.asarray(tiny_model.denoise(n, key=3, first_index=i)) for i, n in ((0, 3), (3, 3), (6, 1), (7, 1))]
    )
    np.testing.assert_allclose(four, one, atol=1e-5)


@pytest.mark.slow
def test_cli_over_devices_and_processes_writes_the_same_images(saved, tmp_path):
    common = ["--model", str(saved), "--n", "7", "--seed", "5", "--steps", "10"]
    single = _cli([*common, "--batch", "7", "--out", str(tmp_path / "one")])
    _wait(single)
    # 4 devices, batches of 3 (padded to 4 on the devices, extras dropped).
    _wait(_cli([*common, "--batch", "3", "--out", str(tmp_path / "four")], FOUR_DEVICES))
    # Two processes over loopback, one device each, sharing the output folder.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        _cli(
            [
                *common,
                "--batch",
                "2",
                "--out",
                str(tmp_path / "two"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ]
        )
        for i in range(2)
    ]
    outs = [_wait(p) for p in procs]
    assert "process 1 of 2" in outs[1]
    want = _pngs(tmp_path / "one", 7)
    for folder in ("four", "two"):
        assert np.abs(_pngs(tmp_path / folder, 7) - want).max() <= 1, folder
    assert not (tmp_path / "four" / "00007.png").exists()


@pytest.mark.slow
def test_data_parallel_training_on_four_devices_matches_one(tmp_path):
    """Same global batch and seed: the loss curve and params on 4 devices equal 1 device's,
    to a tolerance that a run on other data (another seed) fails by far."""
    script = textwrap.dedent("""
        import dataclasses
        import jax, numpy as np
        from ddpm_jax.data import load_digits_images
        from ddpm_jax.sharding import data_mesh
        from ddpm_jax.train import init_state, make_train_step
        from ddpm_jax.trainer import Trainer
        from tests.helpers import MINI_TRAIN, ONE_LEVEL_UNET, TINY_DIFFUSION
        assert jax.device_count() == 4
        data = load_digits_images(8)
        flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(jax.device_get(tree))])
        start = flat(init_state(ONE_LEVEL_UNET, MINI_TRAIN).params)

        def run(devices, key=None):
            state = init_state(ONE_LEVEL_UNET, MINI_TRAIN)
            if key is not None:  # the same init, other batches and noise; the same compiled step
                state = dataclasses.replace(state, key=jax.random.key_data(jax.random.key(key)))
            t = Trainer(data, unet_config=ONE_LEVEL_UNET, diffusion_config=TINY_DIFFUSION, train_config=MINI_TRAIN,
                        state=state, mesh=data_mesh(devices))
            losses = [float(t.train(1)["loss_sum"]) for _ in range(15)]
            return np.array(losses), flat(t.state.params)

        (l1, p1), (l4, p4) = run(jax.devices()[:1]), run(jax.devices())
        _, p_other = run(jax.devices()[:1], key=99)
        np.testing.assert_allclose(l4, l1, rtol=1e-4, atol=1e-6)
        # Params: the distance between the runs relative to how far training moved them.
        moved = np.linalg.norm(p1 - start)
        same, other = np.linalg.norm(p4 - p1) / moved, np.linalg.norm(p_other - p1) / moved
        print(f"relative param distance: 4 vs 1 devices {same:.2e}, other seed {other:.2e}")
        assert same < 0.02, same
        assert other > 0.2, other  # the check above would fail a real difference
        try:
            make_train_step(ONE_LEVEL_UNET, MINI_TRAIN.__class__(batch_size=6), data_mesh())
        except ValueError as err:
            assert "multiple of 4" in str(err)
        else:
            raise AssertionError("a batch of 6 over 4 devices must be refused")
        print("max loss difference", np.abs(l4 - l1).max())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(FOUR_DEVICES),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max loss difference" in proc.stdout, proc.stdout
    print(proc.stdout)


@pytest.mark.slow
def test_inpainting_and_interpolation_on_four_devices_match_one(saved):
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from ddpm_jax import Diffusion
        from ddpm_jax.sharding import data_mesh
        assert jax.device_count() == 4
        picture, other = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
        mask = np.zeros((8, 8), bool)
        mask[:4] = True
        runs = []
        for mesh in (None, data_mesh()):
            m = Diffusion.from_pretrained({str(saved)!r}, chunk_size=8, mesh=mesh)
            inpainted = m.inpaint(picture, mask, n=4, key=2, steps=10, jump_length=3, jump_n_sample=2)
            mixed = m.interpolate(picture, other, 12, [0.0, 0.3, 0.6, 1.0], key=2)
            runs.append((np.asarray(inpainted), np.asarray(mixed)))
        assert len(inpainted.sharding.device_set) == 4 and len(mixed.sharding.device_set) == 4
        for one, four in zip(*runs):
            np.testing.assert_allclose(four, one, atol=1e-5)
        print("max difference", max(np.abs(a - b).max() for a, b in zip(*runs)))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=_env(FOUR_DEVICES), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max difference" in proc.stdout
