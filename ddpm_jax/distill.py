"""Progressive distillation (Salimans & Ho 2022, Alg. 2): rounds that each halve a model's steps.

A round trains a student, initialised from its teacher, to take in one DDIM step (eta 0) the two
steps the teacher takes on its chain of 2N trailing timesteps (`coefficients.trailing_timesteps`:
halving keeps every other timestep, so the student's N steps lie on the teacher's 2N). The student
becomes the next teacher, down to the target. The teacher is always read by its own prediction
type, so the first student may predict v or x_0 while its eps teacher predicts eps: it starts from
the teacher's network, whose output it reads as its own type, and its first round learns the new
parameterization along with the halving (in place of re-training the teacher as a v model first).

A run folder (`distill`):

| file                    | what                                                                  |
|-------------------------|-----------------------------------------------------------------------|
| `distill.json`          | the run's settings and the teacher's digest; a resume must match       |
| `round-<r>-<N>-steps/`  | round r: a `trainer` run folder of the N-step student (checkpoints,    |
|                         | log.jsonl with the round, its N-step sample grid, `ema.safetensors`)   |
| `distilled.safetensors` | the last round's model, sampled in its N steps by `from_pretrained`    |
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .atomic import write_bytes
from .checkpoint import list_checkpoints, tensor_digest
from .checks import check_choice, check_int
from .coefficients import Coefficients, coefficients_float64, make_coefficients
from .config import PREDICTION_TYPES, DiffusionConfig, UNetConfig, config_to_dict
from .diffusion import at, ddim_step, model_prediction, q_sample
from .folder_lock import folder_lock
from .train import TrainConfig
from .trainer import RunOptions, open_run
from .unet import UNet
from .weights import flatten_params, load_weights, save_weights

log = logging.getLogger(__name__)

# Our defaults, not the paper's; `ddpm-jax distill` sets decay_steps to the steps per round, annealing
# the learning rate to 0 in each round as the paper does (the step count restarts in each round).
DISTILL_TRAIN = TrainConfig(learning_rate=1e-4, warmup_steps=0, ema_decay=0.999, batch_size=128, random_flip=False)
MANIFEST = "distill.json"
MANIFEST_FORMAT = "ddpm_jax.distill/1"
WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def loss_weights(alphas_cumprod: np.ndarray, weighting: str) -> np.ndarray:
    """w(lambda_t) of the x_0 loss per step (Sec. 4), SNR = abar / (1 - abar): "truncated_snr"
    max(SNR, 1), i.e. the larger of the x_0 and eps losses; "snr_plus_one" SNR + 1, the v loss."""
    check_choice("weighting", weighting, WEIGHTINGS)
    abar = np.asarray(alphas_cumprod, np.float64)
    snr = abar / (1.0 - abar)
    return np.maximum(snr, 1.0) if weighting == "truncated_snr" else snr + 1.0


def round_steps(teacher: DiffusionConfig, from_steps: int | None, to_steps: int) -> list[int]:
    """The students' step counts, from_steps / 2 down to to_steps, or ValueError.

    from_steps defaults to a distilled teacher's own N, else the largest power of two <= T.
    """
    T = teacher.num_diffusion_timesteps
    own = teacher.distilled_steps
    if from_steps is None:
        from_steps = own if own is not None else 1 << (T.bit_length() - 1)
    from_steps = check_int("from_steps", from_steps, 2, 10**9)
    if from_steps > T:
        raise ValueError(
            f"from_steps={from_steps} is more than the teacher's T={T} timesteps; "
            f"start from at most T ({1 << (T.bit_length() - 1)} is the largest power of two)"
        )
    if own is not None and from_steps != own:
        raise ValueError(f"the teacher is distilled to {own} steps, its only chain: from_steps must be {own}")
    to_steps = check_int("to_steps", to_steps, 1, from_steps - 1)
    ratio = from_steps // to_steps
    if from_steps % to_steps or ratio & (ratio - 1):
        halvings = [from_steps >> i for i in range(1, from_steps.bit_length()) if from_steps % (1 << i) == 0]
        raise ValueError(
            f"to_steps={to_steps} is not from_steps={from_steps} halved a whole number of times "
            f"(each round halves the steps); choose one of {halvings}"
        )
    return [from_steps >> r for r in range(1, ratio.bit_length())]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RoundInputs:
    """What one round's loss reads besides the student's params (a pytree, jit argument)."""

    teacher_params: Any
    teacher: Coefficients  # the teacher's chain of 2N trailing timesteps, its prediction type
    student: Coefficients  # the student's chain of N, its prediction type
    weights: jax.Array  # w(lambda_t) at each student step, float32
    steps: jax.Array  # int32 scalar N: the tables past N (2N for the teacher) are padding


def _padded(tree, length: int):
    return jax.tree.map(lambda a: jax.device_put(np.pad(np.asarray(a), (0, length - len(a)))), tree)


def round_inputs(
    teacher_params, teacher: DiffusionConfig, student: DiffusionConfig, weighting: str, length: int | None = None
) -> RoundInputs:
    """The tables of the round that distils `teacher`'s 2N steps into `student`'s N = distilled_steps,
    zero-padded to `length` >= N student steps (2 `length` for the teacher), so that one compiled
    step serves every round of a run."""
    n = student.distilled_steps
    length = n if length is None else length
    abar = coefficients_float64(student, n, "trailing")["alphas_cumprod"]
    return RoundInputs(
        teacher_params=jax.device_put(teacher_params),
        teacher=_padded(make_coefficients(teacher, 2 * n, "trailing"), 2 * length),
        student=_padded(make_coefficients(student, n, "trailing"), length),
        weights=_padded(loss_weights(abar, weighting).astype(np.float32), length),
        steps=jax.device_put(np.int32(n)),
    )


def two_teacher_steps(apply, z, k, coeffs: Coefficients, clip: bool = False):
    """z_t'' from z_t at teacher chain index k (int32 (n,), odd): two DDIM steps, eta 0
    (Alg. 2, z_t' then z_t''); from k = 1 the second ends at x_0 itself. With `clip`, each
    step's predicted x_0 is clipped to [-1, 1], as the samplers do by default.
    `apply(z, t)` is the teacher's output at model timesteps t, read by `coeffs`' prediction type."""
    for i in (k, k - 1):
        z, _ = ddim_step(apply(z, coeffs.timesteps[i]), z, i, 0.0, coeffs, clip=clip)
    return z


def distillation_target(z, z2, alpha, sigma, alpha2, sigma2):
    """x~ = (z'' - (sigma''/sigma) z_t) / (alpha'' - (sigma''/sigma) alpha_t), Alg. 2: the x_0
    with which one DDIM step from z_t (alpha, sigma) lands on z_t'' (alpha'', sigma'')."""
    ratio = sigma2 / sigma
    return (z2 - ratio * z) / (alpha2 - ratio * alpha)


def distillation_loss(
    params, model: UNet, x0, key, inputs: RoundInputs, train: bool = True, *, clip_teacher: bool = False
):
    """Alg. 2's loss: w(lambda_t) || x~ - x_hat(z_t) ||^2, the mean over pixels and batch.

    t is uniform over the student's N steps (chain index j, the teacher's 2j + 1);
    z_t = alpha_t x + sigma_t eps; x_hat is the student's output read as x_0, unclipped;
    `clip_teacher` clips the teacher's predicted x_0 in its two steps (`two_teacher_steps`).
    """
    j_key, noise_key, dropout_key = jax.random.split(key, 3)
    s = inputs.student
    j = jax.random.randint(j_key, (x0.shape[0],), 0, inputs.steps, dtype=jnp.int32)
    z = q_sample(x0, j, jax.random.normal(noise_key, x0.shape, x0.dtype), s)

    def teacher(x, t):
        return model.apply({"params": inputs.teacher_params}, x, t, train=False)

    z2 = two_teacher_steps(teacher, z, 2 * j + 1, inputs.teacher, clip_teacher)
    target = distillation_target(
        z,
        z2,
        at(s.sqrt_alphas_cumprod, j),
        at(s.sqrt_one_minus_alphas_cumprod, j),
        at(s.sqrt_alphas_cumprod_prev, j),
        at(s.sqrt_one_minus_alphas_cumprod_prev, j),
    )
    output = model.apply({"params": params}, z, s.timesteps[j], train=train, rngs={"dropout": dropout_key})
    _, x_hat = model_prediction(output, z, j, s, clip=False)
    return jnp.mean(at(inputs.weights, j) * (jax.lax.stop_gradient(target) - x_hat) ** 2)


# One function object per choice, so that every round (and run) of a process reuses one compiled step.
_LOSSES = {clip: functools.partial(distillation_loss, clip_teacher=clip) for clip in (False, True)}


@dataclass(frozen=True)
class DistillPlan:
    """What a run distils: from the teacher's `from_steps` (None: `round_steps`' default) down to
    `to_steps`, students predicting `prediction` trained with `weighting` (`WEIGHTINGS`).

    `clip_teacher` (default) clips the teacher's predicted x_0 to [-1, 1] in its two DDIM steps,
    as sampling does. Alg. 2 does not clip, but its teachers predict v; an eps teacher's
    x_0 = (z - sigma eps) / alpha magnifies its error by sigma / alpha (156 at t = 999 of the
    release's schedule), and the bundled digits teacher's targets there reach |x~| = 41."""

    from_steps: int | None = None
    to_steps: int = 4
    prediction: str = "v"
    weighting: str = "truncated_snr"
    clip_teacher: bool = True

    def __post_init__(self):
        check_choice("prediction", self.prediction, PREDICTION_TYPES)
        check_choice("weighting", self.weighting, WEIGHTINGS)


def _manifest(teacher, plan: DistillPlan, students, train_config: TrainConfig, options: RunOptions) -> dict:
    dcfg, ucfg, params = teacher
    flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
    meta = {
        "format": MANIFEST_FORMAT,
        "teacher_sha256": tensor_digest(flat),
        "teacher_config": config_to_dict(dcfg),
        "unet_config": config_to_dict(ucfg),
        "plan": {**config_to_dict(plan), "students": students},
        "train_config": config_to_dict(train_config),
        "steps_per_round": options.steps,
    }
    return json.loads(json.dumps(meta))


def _check_manifest(out: Path, want: dict, resume: bool):
    path = out / MANIFEST
    if not resume:
        if path.exists() or any(out.glob("round-*")):
            raise ValueError(f"{out} already holds a distillation run; pass --resume or choose another --out")
        write_bytes(path, json.dumps(want, indent=1, sort_keys=True).encode())
        return
    try:
        have = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not readable JSON ({err}); start a new run in another --out") from err
    if isinstance(have, dict) and isinstance(have.get("train_config"), dict):
        # a field added since the run began (decay_steps) had its default, as `trainer` reads it
        have["train_config"] = {**config_to_dict(TrainConfig()), **have["train_config"]}
    differ = [k for k in want if not isinstance(have, dict) or have.get(k) != want[k]]
    if differ:
        raise ValueError(
            f"{out} holds a distillation run with other {', '.join(differ)}; resume with the same "
            "--model and flags, or distil into a new --out"
        )


def distill(
    out,
    data,
    teacher: tuple[DiffusionConfig, UNetConfig, dict],
    *,
    plan: DistillPlan,
    train_config: TrainConfig,
    options: RunOptions,
    resume: bool = False,
    mesh=None,
    progress: bool = True,
) -> Path:
    """Run (or resume) the rounds of `plan` from `teacher` = (configs, params) on `data` (N, H, W, C)
    in [-1, 1], `options.steps` optimizer steps a round, into the folder `out` (see the module's
    table), holding its lock throughout. Returns the path of `distilled.safetensors`.

    A round is done when its `ema.safetensors` is there; the next teacher is always read from that
    file, so a run killed anywhere and resumed gives the params of one uninterrupted run.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder path")
    dcfg, ucfg, params = teacher
    students = round_steps(dcfg, plan.from_steps, plan.to_steps)
    want = _manifest(teacher, plan, students, train_config, options)
    if resume and not (out / MANIFEST).is_file():
        raise FileNotFoundError(f"--resume: no {MANIFEST} in {out}; drop --resume to start a run")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "distillation run"):
        _check_manifest(out, want, resume)
        for r, n in enumerate(students, 1):
            folder = out / f"round-{r}-{n}-steps"
            if not (folder / "ema.safetensors").is_file():
                student = dataclasses.replace(dcfg, prediction_type=plan.prediction, distilled_steps=n)
                trainer = open_run(
                    folder,
                    data,
                    unet_config=ucfg,
                    diffusion_config=student,
                    train_config=train_config,  # the same in every round: one compiled step
                    resume=bool(list_checkpoints(folder / "checkpoints")),
                    mesh=mesh,
                    init_params=params,
                    loss=_LOSSES[plan.clip_teacher],
                    loss_inputs=round_inputs(params, dcfg, student, plan.weighting, students[0]),
                )
                log.info("round %d of %d: %d -> %d steps, into %s", r, len(students), 2 * n, n, folder)
                record = {"round": r, "teacher_steps": 2 * n, "student_steps": n}
                trainer.fit_unlocked(folder, options, progress, record)
            dcfg, ucfg, params = load_weights(folder / "ema.safetensors")
        final = out / "distilled.safetensors"
        save_weights(final, params, diffusion_config=dcfg, unet_config=ucfg)
    log.info("distilled to %d steps: %s", students[-1], final)
    return final
