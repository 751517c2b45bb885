"""Progressive distillation (Salimans & Ho 2022, Alg. 2): the target against a float64 reference,
the loss weights, rounds and their files, a killed run resumed exactly, `ddpm-jax distill` end to end."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import samplers
from ddpm_jax.cli import main
from ddpm_jax.coefficients import coefficients_float64, make_coefficients, trailing_timesteps
from ddpm_jax.config import DiffusionConfig
from ddpm_jax.diffusion import ddim_step
from ddpm_jax.distill import (
    DISTILL_TRAIN,
    DistillPlan,
    distill,
    distillation_loss,
    distillation_target,
    loss_weights,
    round_inputs,
    round_steps,
    two_teacher_steps,
)
from ddpm_jax.pipeline import Diffusion
from ddpm_jax.trainer import RunOptions
from ddpm_jax.unet import UNet, init_params
from ddpm_jax.weights import flatten_params, load_weights

from .helpers import ONE_LEVEL_UNET, TINY_DIFFUSION, kill_train_steps_after, make_tiny_model

# What `ddpm-jax distill --batch 16 --lr 0.001 --ema-decay 0.9 --decay-steps 0` trains with: every run
# here but the command's (which anneals the lr) shares one compiled step (16 steps down, the same tables).
TRAIN = dataclasses.replace(DISTILL_TRAIN, learning_rate=1e-3, ema_decay=0.9, batch_size=16)
FLAGS = ["--batch", "16", "--lr", "0.001", "--ema-decay", "0.9"]


@pytest.fixture(scope="module")
def teacher():
    return TINY_DIFFUSION, ONE_LEVEL_UNET, init_params(ONE_LEVEL_UNET, jax.random.key(0))


def _student(prediction="v", n=4):
    return dataclasses.replace(TINY_DIFFUSION, prediction_type=prediction, distilled_steps=n)


@pytest.mark.parametrize("T", [40, 1000, 1023])
def test_trailing_chains_halve_into_each_other(T):
    S = 1 << (T.bit_length() - 1)
    while S > 1:
        big = trailing_timesteps(T, S)
        assert big[-1] == T - 1 and len(set(big)) == S
        np.testing.assert_array_equal(big[1::2], trailing_timesteps(T, S // 2))
        S //= 2


@pytest.mark.parametrize("clip", [False, True])
def test_target_is_two_teacher_ddim_steps_in_one(teacher, clip):
    """Alg. 2's x~ against float64 DDIM (Song et al. eq. 12), the teacher's x_0 clipped or not;
    one student DDIM step that predicts x~ lands where two teacher steps land."""
    dcfg, ucfg, params = teacher
    n = 4
    net = UNet(ucfg)

    def apply(z, t):
        return net.apply({"params": params}, z, t)

    z = np.random.default_rng(0).standard_normal((n, 8, 8, 1))
    j = np.arange(n)  # every student step, the last (to x_0) included
    k = 2 * j + 1
    z2 = two_teacher_steps(
        apply, jnp.asarray(z, jnp.float32), jnp.asarray(k, jnp.int32), make_coefficients(dcfg, 2 * n, "trailing"), clip
    )

    tables = coefficients_float64(dcfg, 2 * n, "trailing")
    abar = np.append(1.0, tables["alphas_cumprod"])  # abar[i + 1] at chain index i; 1 past the end (x_0)

    def ddim(x, i):
        a, a_prev = abar[i + 1][:, None, None, None], abar[i][:, None, None, None]
        eps = np.asarray(apply(jnp.asarray(x, jnp.float32), jnp.asarray(tables["timesteps"][i], jnp.int32)), np.float64)
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        if clip:  # x_0 clipped, eps re-derived from it
            clipped[0] |= bool((np.abs(x0) > 1).any())
            x0 = np.clip(x0, -1, 1)
            eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps

    clipped = [False]
    ref2 = ddim(ddim(z, k), k - 1)
    assert clipped[0] == clip  # the clip was exercised
    np.testing.assert_allclose(np.asarray(z2), ref2, atol=2e-4)

    a, a2 = (np.sqrt(abar[i + 1])[:, None, None, None] for i in (k, k - 2))
    s, s2 = (np.sqrt(1 - abar[i + 1])[:, None, None, None] for i in (k, k - 2))
    ref_target = (ref2 - s2 / s * z) / (a2 - s2 / s * a)
    sc = make_coefficients(_student("x0", n), n, "trailing")
    at = lambda table: table[j][:, None, None, None]  # noqa: E731
    target = distillation_target(
        z,
        z2,
        at(sc.sqrt_alphas_cumprod),
        at(sc.sqrt_one_minus_alphas_cumprod),
        at(sc.sqrt_alphas_cumprod_prev),
        at(sc.sqrt_one_minus_alphas_cumprod_prev),
    )
    np.testing.assert_allclose(np.asarray(target), ref_target, atol=1e-3)
    one_step, _ = ddim_step(target, jnp.asarray(z, jnp.float32), jnp.asarray(j), 0.0, sc, clip=False)
    np.testing.assert_allclose(np.asarray(one_step), np.asarray(z2), atol=1e-4)


class _ExactStudent:
    """The UNet for the teacher's params; for params {"exact": ...}, the exact two-step map
    (output as the student's prediction type reads it): a student that matches the target."""

    def __init__(self, ucfg, inputs, prediction, clip):
        self.net, self.inputs, self.prediction, self.clip = UNet(ucfg), inputs, prediction, clip

    def apply(self, variables, z, t, train=False, rngs=None):
        if "exact" not in variables["params"]:
            return self.net.apply(variables, z, t)
        s = self.inputs.student
        j = jnp.searchsorted(s.timesteps, t)
        teacher = lambda x, u: self.net.apply({"params": self.inputs.teacher_params}, x, u)  # noqa: E731
        z2 = two_teacher_steps(teacher, z, 2 * j + 1, self.inputs.teacher, self.clip)
        cols = [
            s.sqrt_alphas_cumprod,
            s.sqrt_one_minus_alphas_cumprod,
            s.sqrt_alphas_cumprod_prev,
            s.sqrt_one_minus_alphas_cumprod_prev,
        ]
        alpha, sigma, *_ = (c[j][:, None, None, None] for c in cols)
        x0 = distillation_target(z, z2, *(c[j][:, None, None, None] for c in cols))
        return x0 if self.prediction == "x0" else (alpha * z - x0) / sigma  # x_0 = alpha z - sigma v


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction, tol", [("x0", 0.0), ("v", 1e-9)])
def test_a_student_that_is_the_two_step_map_has_zero_loss(teacher, digits, prediction, tol, clip):
    dcfg, ucfg, params = teacher
    inputs = round_inputs(params, dcfg, _student(prediction), "truncated_snr")
    x0, key = digits[:8], jax.random.key(3)
    exact = {"exact": jnp.zeros(())}

    def loss(p, model_clip, loss_clip):
        model = _ExactStudent(ucfg, inputs, prediction, model_clip)
        return float(distillation_loss(p, model, x0, key, inputs, clip_teacher=loss_clip))

    assert loss(exact, clip, clip) <= tol
    assert loss(exact, not clip, clip) > 1e-3  # the map of the other teacher is not the target
    assert loss(params, clip, clip) > 1e-3  # the teacher's net read as v or x_0


def test_loss_weights_are_the_papers():
    abar = np.array([0.9, 0.5, 0.1])
    np.testing.assert_allclose(loss_weights(abar, "truncated_snr"), [9.0, 1.0, 1.0])
    np.testing.assert_allclose(loss_weights(abar, "snr_plus_one"), [10.0, 2.0, 10 / 9])
    # as losses (Sec. 4): max(x_0 loss, eps loss), and the v loss
    rng = np.random.default_rng(0)
    x, x_hat, eps = rng.standard_normal((3, 3, 5))
    alpha, sigma = np.sqrt(abar)[:, None], np.sqrt(1 - abar)[:, None]
    z = alpha * x + sigma * eps
    eps_hat = (z - alpha * x_hat) / sigma
    x_loss = ((x - x_hat) ** 2).sum(1)
    np.testing.assert_allclose(
        loss_weights(abar, "truncated_snr") * x_loss, np.maximum(x_loss, ((eps - eps_hat) ** 2).sum(1))
    )
    v, v_hat = alpha * eps - sigma * x, alpha * eps_hat - sigma * x_hat
    np.testing.assert_allclose(loss_weights(abar, "snr_plus_one") * x_loss, ((v - v_hat) ** 2).sum(1))
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        loss_weights(abar, "snr")


@pytest.mark.parametrize(
    "T, own, start, to, match",
    [
        (40, None, 16, 3, r"to_steps=3 is not from_steps=16 halved a whole number of times .*\[8, 4, 2, 1\]"),
        (40, None, 24, 4, r"to_steps=4 is not from_steps=24 halved"),
        (40, None, 64, 4, r"from_steps=64 is more than the teacher's T=40 timesteps; .*32 is the largest"),
        (1000, None, 1024, 4, r"from_steps=1024 is more than the teacher's T=1000 .*512"),
        (40, None, 16, 16, r"to_steps=16 is out of range; expected 1 <= to_steps <= 15"),
        (40, None, 16, 0, r"to_steps=0 is out of range"),
        (40, 8, 16, 4, r"the teacher is distilled to 8 steps, its only chain: from_steps must be 8"),
    ],
)
def test_bad_step_counts_are_refused(T, own, start, to, match):
    with pytest.raises(ValueError, match=match):
        round_steps(DiffusionConfig(num_diffusion_timesteps=T, distilled_steps=own), start, to)


def test_step_counts_of_the_rounds():
    assert round_steps(DiffusionConfig(), None, 4) == [256, 128, 64, 32, 16, 8, 4]
    assert round_steps(DiffusionConfig(num_diffusion_timesteps=40), 12, 3) == [6, 3]
    assert round_steps(DiffusionConfig(num_diffusion_timesteps=40, distilled_steps=8), None, 1) == [4, 2, 1]
    with pytest.raises(ValueError, match="unknown prediction 'eps2'"):
        DistillPlan(prediction="eps2")


def _options(**kw):
    return RunOptions(**{"steps": 4, "ckpt_every": 2, "sample_every": 0, "log_every": 1, **kw})


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_one_round_halves_the_steps_and_writes_what_it_says(teacher, digits, tmp_path):
    final = distill(
        tmp_path,
        digits,
        teacher,
        plan=DistillPlan(16, 8),
        train_config=TRAIN,
        options=_options(sample_every=4),
        progress=False,
    )
    folder = tmp_path / "round-1-8-steps"
    assert final == tmp_path / "distilled.safetensors"
    assert (folder / "samples" / "step-00000004.png").is_file()
    assert [p.name for p in (folder / "checkpoints").iterdir()] != []
    assert [(r["round"], r["teacher_steps"], r["student_steps"], r["step"]) for r in _log(folder)] == [
        (1, 16, 8, s) for s in (1, 2, 3, 4)
    ]
    model = Diffusion.from_pretrained(final)
    assert model.sampler == samplers.DISTILLED and model.num_timesteps == 8
    assert (model.diffusion_config.prediction_type, model.diffusion_config.distilled_steps) == ("v", 8)
    np.testing.assert_array_equal(np.asarray(model.coeffs.timesteps), trailing_timesteps(40, 8))
    assert np.isfinite(np.asarray(model.denoise(2))).all()
    with pytest.raises(ValueError, match="already holds a distillation run; pass --resume"):
        distill(tmp_path, digits, teacher, plan=DistillPlan(16, 8), train_config=TRAIN, options=_options())
    with pytest.raises(ValueError, match="with other plan; resume with the same"):
        distill(
            tmp_path,
            digits,
            teacher,
            plan=DistillPlan(16, 8, weighting="snr_plus_one"),
            train_config=TRAIN,
            options=_options(),
            resume=True,
        )


def test_a_run_killed_mid_round_and_between_rounds_resumes_exactly(teacher, digits, tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    run = dict(plan=DistillPlan(16, 4), train_config=TRAIN, options=_options(), progress=False)
    distill(one, digits, teacher, **run)
    with monkeypatch.context() as m:
        kill_train_steps_after(m, 3)  # dies in round 1's step 4; its newest checkpoint is step 2
        with pytest.raises(KeyboardInterrupt):
            distill(two, digits, teacher, **run)
    assert not (two / "round-1-8-steps" / "ema.safetensors").exists()
    with monkeypatch.context() as m:
        kill_train_steps_after(m, 2)  # round 1's steps 3 and 4, then dies before round 2's first step
        with pytest.raises(KeyboardInterrupt):
            distill(two, digits, teacher, resume=True, **run)
    assert (two / "round-1-8-steps" / "ema.safetensors").is_file()
    assert not (two / "round-2-4-steps" / "checkpoints").exists()
    distill(two, digits, teacher, resume=True, **run)
    for name in ("round-1-8-steps/ema.safetensors", "distilled.safetensors"):
        a, b = (flatten_params(load_weights(folder / name)[2]) for folder in (one, two))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    for folder in ("round-1-8-steps", "round-2-4-steps"):
        assert [r["step"] for r in _log(two / folder)] == [1, 2, 3, 4]
    # a run from before decay_steps existed (no such field in its manifest) resumes with the default, 0
    manifest = json.loads((two / "distill.json").read_text())
    del manifest["train_config"]["decay_steps"]
    (two / "distill.json").write_text(json.dumps(manifest))
    distill(two, digits, teacher, resume=True, **run)
    with pytest.raises(ValueError, match="holds a distillation run with other train_config"):
        distill(two, digits, teacher, resume=True, **{**run, "train_config": dataclasses.replace(TRAIN, decay_steps=4)})


def test_the_command_end_to_end(tmp_path, capsys):
    teacher, run = make_tiny_model(tmp_path / "teacher.safetensors"), tmp_path / "run"
    args = ["distill", "--model", teacher, "--data", "digits", "--out", str(run), "--from-steps", "16"]
    assert main([*args, "--steps-per-round", "2", "--ckpt-every", "2", *FLAGS]) == 0  # to 4 steps by default
    assert "distilled to 4 steps" in capsys.readouterr().out
    manifest = json.loads((run / "distill.json").read_text())
    assert manifest["plan"]["clip_teacher"] is True
    assert manifest["train_config"]["decay_steps"] == 2  # the lr annealed to 0 in each round by default
    for folder in ("round-1-8-steps", "round-2-4-steps"):
        assert (run / folder / "samples" / "step-00000002.png").is_file()
    distilled = run / "distilled.safetensors"
    model = Diffusion.from_pretrained(distilled)
    assert (model.sampler, model.num_timesteps) == (samplers.DISTILLED, 4)
    # a finished run resumed: nothing to train, the same model
    assert main([*args, "--steps-per-round", "2", "--ckpt-every", "2", *FLAGS, "--resume"]) == 0
    np.testing.assert_array_equal(
        flatten_params(load_weights(distilled)[2])["conv_in/kernel"], flatten_params(model.params)["conv_in/kernel"]
    )
    assert main(["sample", "--model", str(distilled), "--n", "2", "--out", str(tmp_path / "s")]) == 0
    manifest = json.loads(next((tmp_path / "s").glob("*.json")).read_text())
    assert (manifest["sampler"], manifest["steps"]) == ("ddim_trailing", 4)
    assert main(["convert", str(distilled), str(tmp_path / "x.ckpt"), "--to-torch"]) == 2
    assert "predicts 'v', but the port's state_dict has no config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--to-steps", "3"], "to_steps=3 is not from_steps=16 halved a whole number of times"),
        (["--from-steps", "64"], "from_steps=64 is more than the teacher's T=40 timesteps"),
        (["--to-steps", "16"], "to_steps=16 is out of range"),
        (["--steps-per-round", "0"], "steps=0 is out of range"),
        (["--resume"], "--resume: no distill.json in"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, flags, match):
    teacher, run = make_tiny_model(tmp_path / "teacher.safetensors"), tmp_path / "run"
    args = ["distill", "--model", teacher, "--data", "digits", "--out", str(run), "--from-steps", "16"]
    assert main([*args, "--steps-per-round", "2", *flags]) == 2
    assert match in capsys.readouterr().err
    assert not run.exists()
