"""Inpainting (RePaint): the jump schedule, the step, the chunked chain, parity with diffusers, the CLI."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ddpm_jax import Diffusion, DiffusionConfig
from ddpm_jax.cli import main
from ddpm_jax.coefficients import coefficients_float64, make_coefficients
from ddpm_jax.diffusion import denoising_step
from ddpm_jax.inpainting import FORWARD, REVERSE, jump_schedule, repaint_step

from .helpers import RGB_UNET, TINY_DIFFUSION, inpaint_inputs, numpy_state_dict, random_diffusers_unet

log = logging.getLogger(__name__)
# A short schedule with jumps: 10 steps, jumps of 3 at t = 0, 3, 6, twice each.
SHORT = dict(steps=10, jump_length=3, jump_n_sample=3)


def _picture(seed=0, shape=(8, 8, 1)):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _top_kept(shape=(8, 8)):
    mask = np.zeros(shape, np.float32)
    mask[: shape[0] // 2] = 1  # keep the top half, fill the bottom
    return mask


@pytest.mark.parametrize("steps, jump_length, jump_n_sample", [(10, 3, 3), (25, 10, 10), (20, 5, 1), (7, 6, 4)])
def test_jump_schedule_is_a_walk_from_x_T_to_x_0(steps, jump_length, jump_n_sample):
    rows = jump_schedule(steps, jump_length, jump_n_sample)
    at = steps  # forward steps x has had
    for t, direction in rows:
        assert direction in (REVERSE, FORWARD)
        assert at == (t + 1 if direction == REVERSE else t)  # each row starts where the last one ended
        at = t if direction == REVERSE else t + 1
    assert at == 0 and rows[-1].tolist() == [0, REVERSE]
    n_jumps = len(range(0, steps - jump_length, jump_length)) * (jump_n_sample - 1)
    assert (rows[:, 1] == FORWARD).sum() == n_jumps * jump_length
    assert len(rows) == steps + 2 * n_jumps * jump_length


@pytest.mark.parametrize("T, steps, jump_length, jump_n_sample", [(1000, 250, 10, 10), (100, 20, 4, 3), (50, 50, 7, 2)])
def test_jump_schedule_is_diffusers_set_timesteps(T, steps, jump_length, jump_n_sample):
    """diffusers lists the model timestep of each iteration: a reverse step at
    chain index t is its t, an undo from t to t + 1 its t + 1 (stride T // steps)."""
    from diffusers import RePaintScheduler

    sched = RePaintScheduler(num_train_timesteps=T)
    sched.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    rows = jump_schedule(steps, jump_length, jump_n_sample)
    ours = np.where(rows[:, 1] == REVERSE, rows[:, 0], rows[:, 0] + 1) * (T // steps)
    np.testing.assert_array_equal(ours, sched.timesteps.numpy())


def test_repaint_step_against_float64():
    """Kept pixels: q(x_{t-1} | x_0) with the same noise; filled pixels: the DDPM reverse step."""
    coeffs, ref = make_coefficients(TINY_DIFFUSION), coefficients_float64(TINY_DIFFUSION)
    rng = np.random.default_rng(3)
    x, eps, noise, known = (rng.standard_normal((3, 8, 8, 1)).astype(np.float32) for _ in range(4))
    mask = (rng.uniform(size=(3, 8, 8, 1)) < 0.5).astype(np.float32)
    t = jnp.array([0, 17, 39], jnp.int32)
    out, pred = repaint_step(eps, x, t, noise, known, mask, coeffs)
    fill, fill_pred = denoising_step(eps, x, t, noise, coeffs)
    abar_prev = ref["alphas_cumprod_prev"][np.asarray(t)][:, None, None, None]
    kept = np.sqrt(abar_prev) * known + np.sqrt(1.0 - abar_prev) * noise
    np.testing.assert_allclose(np.where(mask == 1, out, 0), np.where(mask == 1, kept, 0), atol=1e-6)
    np.testing.assert_array_equal(np.where(mask == 0, out, 0), np.where(mask == 0, fill, 0))
    np.testing.assert_array_equal(pred, fill_pred)
    np.testing.assert_array_equal(np.asarray(out)[0][mask[0] == 1], known[0][mask[0] == 1])  # t = 0: x_0 itself


def test_kept_pixels_are_the_picture_and_filled_ones_are_new(tiny_model):
    picture, mask = _picture(), _top_kept()
    seen = []
    x = np.asarray(tiny_model.inpaint(picture, mask, n=3, key=1, callback=seen.append, **SHORT))
    np.testing.assert_array_equal(x[:, :4], np.broadcast_to(picture[:4], (3, 4, 8, 1)))
    assert np.abs(x[:, 4:] - picture[4:]).mean() > 0.1
    assert not np.allclose(x[0, 4:], x[1, 4:])  # completions differ
    total = len(jump_schedule(10, 3, 3))
    assert len(seen) == -(-total // tiny_model.chunk_size) and seen[-1].step == 0
    assert all(s.pred_x0.shape == (3, 8, 8, 1) for s in seen)


def test_completion_i_is_the_same_anywhere_in_a_batch_and_after_a_resume(tiny_model):
    picture, mask = _picture(1), _top_kept()
    batch = list(tiny_model.inpaint_steps(picture, mask, n=3, key=5, **SHORT))
    shifted = tiny_model.inpaint(picture, mask, n=3, key=5, first_index=2, **SHORT)
    np.testing.assert_allclose(np.asarray(shifted[0]), np.asarray(batch[-1].x[2]), atol=1e-5)
    # Resume from the Step after chunk 2: the same x_0 as one run.
    start = 2 * tiny_model.chunk_size
    resumed = tiny_model.inpaint(picture, mask, n=3, key=5, x=batch[1].x, start=start, **SHORT)
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(batch[-1].x))
    other_seed = tiny_model.inpaint(picture, mask, n=3, key=6, **SHORT)
    assert not np.allclose(np.asarray(other_seed), np.asarray(batch[-1].x))


def test_one_compilation_for_every_schedule(tiny_model, tiny_params):
    model = tiny_model.with_params(tiny_params)  # shares the compiled chunk
    picture, mask = _picture(2), _top_kept()
    before = model._repaint_chunk._cache_size()
    # Three lengths of the process: its tables are padded to T, so at most one
    # new program (for this batch shape, if no test compiled it yet).
    for settings in (SHORT, dict(steps=40, jump_length=10, jump_n_sample=2), dict(steps=5, jump_n_sample=1)):
        model.inpaint(picture, mask, n=3, key=0, **settings)
    assert model._repaint_chunk._cache_size() - before <= 1
    # Replacement (jump_n_sample=1): no jumps, one reverse step per row.
    assert (jump_schedule(5, 10, 1) == [[t, REVERSE] for t in range(4, -1, -1)]).all()


def test_bad_input_is_refused_with_the_fix(tiny_model):
    picture, mask = _picture(), _top_kept()
    cases = [
        (dict(mask=mask * 0.5), ValueError, "other than 0 and 1"),
        (dict(mask=np.ones((8, 8))), ValueError, "nothing to inpaint"),
        (dict(mask=np.zeros((6, 8))), ValueError, r"mask has shape \(6, 8\)"),
        (dict(image=picture * 2), ValueError, r"in \[-1, 1\]"),
        (dict(image=np.zeros((8, 8, 1), np.uint8)), TypeError, "u / 127.5 - 1"),
        (dict(image=np.zeros((8, 8, 3), np.float32)), ValueError, r"expects \(8, 8, 1\)"),
        (dict(steps=41), ValueError, "steps=41 is out of range"),
        (dict(jump_length=10, steps=10), ValueError, "jump_length=10 is out of range"),
        (dict(start=3), ValueError, "x is required when start=3"),
        (dict(n=2, image=np.stack([picture] * 3)), ValueError, "batch of 3; expected 1"),
    ]
    for change, error, match in cases:
        kwargs = {**dict(image=picture, mask=mask), **SHORT, **change}
        with pytest.raises(error, match=match):
            tiny_model.inpaint_steps(**kwargs)


def test_chain_matches_diffusers_repaint_scheduler(monkeypatch):
    """Our chain vs a step-by-step loop of RePaintScheduler (as RePaintPipeline runs it), T = 16.

    Configured to be the same process: eta = 1 (its DDIM-form step is then the
    DDPM posterior, our fixedsmall), all T steps (stride 1), no clipping (with
    clipping it keeps the unclipped eps in the DDIM direction term, we the
    posterior mean of the clipped x_0 as the release does), the same x_T and
    the same noise at every iteration.
    """
    torch = pytest.importorskip("torch")
    from diffusers import RePaintScheduler
    from diffusers.schedulers import scheduling_repaint

    from ddpm_jax.convert.diffusers_format import diffusers_to_flax
    from ddpm_jax.sampling import REPAINT, initial_noise, per_sample_normal

    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        T, n, jump_length, jump_n_sample = 16, 2, 4, 3
        model = random_diffusers_unet(RGB_UNET, seed=3)
        params = diffusers_to_flax(numpy_state_dict(model), RGB_UNET)
        shape = (RGB_UNET.resolution, RGB_UNET.resolution, RGB_UNET.in_channels)
        rng = np.random.default_rng(0)
        picture = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
        mask = (rng.uniform(size=(n, 8, 8, 1)) < 0.5).astype(np.float32)
        key, ids = jax.random.key(7), jnp.arange(n)
        ours = Diffusion(
            diffusion_config=DiffusionConfig(num_diffusion_timesteps=T, model_var_type="fixedsmall"),
            unet_config=RGB_UNET,
            params=params,
            chunk_size=7,
        )
        x_ours = np.asarray(
            ours.inpaint(
                picture, mask, key=key, steps=T, jump_length=jump_length, jump_n_sample=jump_n_sample, clip=False
            )
        )

        to_torch = lambda a: torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())  # noqa: E731
        current = {}
        monkeypatch.setattr(
            scheduling_repaint,
            "randn_tensor",
            lambda *a, **k: to_torch(per_sample_normal(key, REPAINT, ids, current["k"], shape)),
        )
        sched = RePaintScheduler(num_train_timesteps=T, eta=1.0, clip_sample=False)
        sched.set_timesteps(T, jump_length=jump_length, jump_n_sample=jump_n_sample)
        x, original, keep = to_torch(initial_noise(key, ids, shape)), to_torch(picture), to_torch(mask)
        t_last = sched.timesteps[0] + 1
        with torch.no_grad():
            for k, t in enumerate(sched.timesteps):
                current["k"] = k
                if t < t_last:
                    x = sched.step(model(x, t).sample, t, x, original, keep).prev_sample
                else:
                    x = sched.undo_step(x, t_last)
                t_last = t
        theirs = x.numpy().transpose(0, 2, 3, 1)
    finally:
        jax.config.update("jax_default_matmul_precision", old)
    err = np.abs(x_ours - theirs).max()
    log.info("RePaint chain of %d iterations: max |ours - diffusers| %.2e", len(sched.timesteps), err)
    assert len(sched.timesteps) == len(jump_schedule(T, jump_length, jump_n_sample)) > T
    assert err <= 1e-4
    assert np.abs(theirs[np.broadcast_to(mask, theirs.shape) == 0]).max() > 0.5  # a real fill, not zeros


def test_inpaint_cli_writes_completions_and_a_grid(saved, tmp_path, capsys):
    picture, mask = inpaint_inputs(tmp_path, keep_columns=5)  # white keeps the left 5 columns
    out = tmp_path / "out"
    args = [
        "inpaint",
        "--model",
        str(saved),
        "--image",
        picture,
        "--mask",
        mask,
        "--out",
        str(out),
        "--n",
        "2",
        "--steps",
        "10",
        "--jump-length",
        "3",
        "--jump-n-sample",
        "2",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "grid.png"]
    got = np.stack([np.asarray(Image.open(out / f"00{i}.png")) for i in range(2)])
    np.testing.assert_array_equal(got[:, :, :5], np.broadcast_to(np.asarray(Image.open(picture))[:, :5], (2, 8, 5)))
    assert np.abs(got[:, :, 5:].astype(int) - np.asarray(Image.open(picture))[:, 5:]).mean() > 10
    assert not np.array_equal(got[0], got[1])
    assert np.asarray(Image.open(out / "grid.png")).shape == (2 + 2 * 10, 2 + 2 * 10)  # 4 tiles of 8 + 2

    args[8] = str(tmp_path / "out2")  # a fresh folder: the first one's files are never replaced
    assert main([*args[:6], str(tmp_path / "none.png"), *args[7:]]) == 2
    err = capsys.readouterr().err
    assert "--mask" in err and "no such file" in err
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    assert main([*args[:4], str(tmp_path / "junk.png"), *args[5:]]) == 2
    assert "is not a readable picture" in capsys.readouterr().err
