"""The training loop as a library: resume, data on the mesh, steps, log, checkpoints, previews, export.

`Trainer` holds one run's state, data and compiled step; `train(n)` runs n
optimizer steps with no I/O (what a benchmark times). `open_run` starts or
resumes a run folder, and `Trainer.fit` drives it to a step count, writing:

| file                                   | what                                                  |
|----------------------------------------|-------------------------------------------------------|
| `checkpoints/ckpt-<step>.safetensors`  | the whole `TrainState` (see `checkpoint.py`)           |
| `log.jsonl`                            | step, mean loss, gradient norm, steps/s per interval  |
| `samples/step-<step>.png`              | a grid of EMA samples (all T steps, seed 0)           |
| `ema.safetensors`                      | the EMA params, in the format `from_pretrained` reads |
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import images
from .atomic import write_bytes
from .checkpoint import list_checkpoints, read_checkpoint, restore_state, save_checkpoint
from .checks import check_int
from .coefficients import make_coefficients
from .config import DiffusionConfig, UNetConfig, config_to_dict
from .folder_lock import folder_lock
from .pipeline import Diffusion
from .sharding import data_mesh, replicate
from .train import TrainConfig, TrainState, init_state, make_train_step
from .weights import save_weights

log = logging.getLogger(__name__)

PREVIEW_SAMPLES = 16


@dataclass(frozen=True)
class RunOptions:
    """How a run is driven and recorded (every count checked at construction)."""

    steps: int  # total optimizer steps to reach
    ckpt_every: int = 500
    keep: int = 3  # checkpoints kept
    sample_every: int = 2000  # 0: no preview grids
    log_every: int = 50

    def __post_init__(self):
        # steps 0 would export an untrained model: refused, as `sample --steps 0` is.
        for name, lo in (("steps", 1), ("ckpt_every", 1), ("keep", 1), ("sample_every", 0), ("log_every", 1)):
            check_int(name, getattr(self, name), lo, 10**9)


def run_metadata(dcfg: DiffusionConfig, ucfg: UNetConfig, tcfg: TrainConfig) -> dict:
    """What a checkpoint records of its run (JSON-ready), to refuse resuming with other settings."""
    meta = {
        "diffusion_config": config_to_dict(dcfg),
        "unet_config": config_to_dict(ucfg),
        "train_config": config_to_dict(tcfg),
    }
    return json.loads(json.dumps(meta))


def _check_same_run(saved: dict, wanted: dict, path):
    # A field the checkpoint lacks was added since it was written (prediction_type): its default held.
    defaults = run_metadata(DiffusionConfig(), UNetConfig(), TrainConfig())
    had = {group: {**defaults.get(group, {}), **saved.get(group, {})} for group in wanted}
    diffs = [
        f"{group}.{k}: checkpoint {had[group].get(k)!r} != requested {v!r}"
        for group, fields in wanted.items()
        for k, v in fields.items()
        if had[group].get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {path} was made with other settings ({'; '.join(diffs)}); "
            "resume with the same --config and flags, or train into a new --out"
        )


class Trainer:
    """One run: its `TrainState`, the data and coefficients on the devices, the compiled step.

    With more than one local device (or a given `mesh`) training is data
    parallel: state and data replicated, each batch sharded (`train.make_train_step`).
    `loss` and its `loss_inputs` (a pytree, put on the devices as the data is) replace
    `train.diffusion_loss` and the coefficients, as `distill` does.
    """

    def __init__(
        self,
        data,
        *,
        unet_config: UNetConfig,
        diffusion_config: DiffusionConfig,
        train_config: TrainConfig,
        state: TrainState | None = None,
        mesh=None,
        loss=None,
        loss_inputs=None,
    ):
        self.unet_config, self.diffusion_config, self.train_config = unet_config, diffusion_config, train_config
        if mesh is None and jax.local_device_count() > 1:
            mesh = data_mesh()
        self.mesh = mesh
        state = init_state(unet_config, train_config) if state is None else state
        inputs = make_coefficients(diffusion_config) if loss_inputs is None else loss_inputs
        state, data, inputs = jax.tree.map(jnp.asarray, state), jnp.asarray(data), inputs
        if mesh is not None:
            state, data, inputs = replicate((state, data, inputs), mesh)
        self.state, self.data, self.inputs = state, data, inputs
        # Without a loss, the same call (and cached step) as the tests' and benchmarks'.
        self._train_step = make_train_step(unet_config, train_config, mesh, *(() if loss is None else (loss,)))
        self._sampler: Diffusion | None = None

    @property
    def step(self) -> int:
        return int(self.state.step)

    def train(self, n: int) -> dict:
        """n optimizer steps, queued without waiting: {'loss_sum', 'grad_norm'} as device scalars."""
        loss_sum = jnp.zeros((), jnp.float32)
        for _ in range(n):
            self.state, metrics = self._train_step(self.state, self.data, self.inputs)
            loss_sum = loss_sum + metrics["loss"]
        return {"loss_sum": loss_sum, "grad_norm": metrics["grad_norm"]}

    def preview(self, n: int = PREVIEW_SAMPLES, key=0) -> jax.Array:
        """n samples of the EMA params (all T steps). One sampler is compiled
        for the run and given the new EMA params each time."""
        ema = jax.device_get(self.state.ema_params)
        if self._sampler is None:
            self._sampler = Diffusion(
                diffusion_config=self.diffusion_config, unet_config=self.unet_config, params=ema, chunk_size=50
            )
        else:
            self._sampler = self._sampler.with_params(ema)
        return self._sampler.denoise(n, key=key)

    def fit(self, out, options: RunOptions, *, progress: bool = True) -> TrainState:
        """Train until `options.steps`, logging, checkpointing and previewing into `out`;
        then export the EMA params to `out/ema.safetensors`. The run holds the folder's
        lock (`folder_lock`) throughout: a second run into it is refused."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out, "training run"):
            return self.fit_unlocked(out, options, progress)

    def fit_unlocked(self, out: Path, options: RunOptions, progress: bool, record: dict | None = None) -> TrainState:
        """`fit` for a caller that holds the lock of a folder above `out` (`distill`);
        `record`'s fields go into every log line."""
        from tqdm import tqdm

        meta = run_metadata(self.diffusion_config, self.unet_config, self.train_config)
        events = (options.log_every, options.ckpt_every, options.sample_every)
        step = self.step
        with (
            _Log(out / "log.jsonl", step) as log_file,
            tqdm(
                initial=step,
                total=max(options.steps, step),
                unit="step",
                desc="train",
                mininterval=2.0,
                disable=not progress,
            ) as bar,
        ):
            t0, s0, loss_sum = time.perf_counter(), step, 0.0
            while step < options.steps:
                # Run to the next step where something is due, without a host sync.
                k = min([options.steps - step] + [e - step % e for e in events if e])
                metrics = self.train(k)
                step += k
                loss_sum = loss_sum + metrics["loss_sum"]
                bar.update(k)
                if step % options.log_every == 0 or step == options.steps:
                    rec = {
                        **(record or {}),
                        "step": step,
                        "loss": float(loss_sum) / (step - s0),  # waits for the queue
                        "grad_norm": float(metrics["grad_norm"]),
                        "steps_per_s": (step - s0) / (time.perf_counter() - t0),
                        "time": time.time(),
                    }
                    log_file.write(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_s=f"{rec['steps_per_s']:.2f}")
                    t0, s0, loss_sum = time.perf_counter(), step, 0.0
                if step % options.ckpt_every == 0 or step == options.steps:
                    save_checkpoint(out / "checkpoints", self.state, meta, keep=options.keep)
                if options.sample_every and step % options.sample_every == 0:
                    x = self.preview()
                    images.save_grid(images.to_uint8(x, clip=True), out / "samples" / f"step-{step:08d}.png")
        save_weights(
            out / "ema.safetensors",
            jax.device_get(self.state.ema_params),
            diffusion_config=self.diffusion_config,
            unet_config=self.unet_config,
        )
        log.info("step %d: EMA params written to %s", step, out / "ema.safetensors")
        return self.state


class _Log:
    """log.jsonl, appended a line per record; on resume, lines past the resumed
    step (written after the checkpoint a killed run resumes from) are dropped first."""

    def __init__(self, path: Path, step: int):
        self.path, self.step = path, step

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [ln for ln in lines if _record_step(ln) is not None and _record_step(ln) <= self.step]
            if kept != lines:
                write_bytes(self.path, "".join(kept).encode())
        self.file = open(self.path, "a")
        return self

    def write(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def __exit__(self, *exc):
        self.file.close()


def _record_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a torn last line of a killed run


def open_run(
    out,
    data,
    *,
    unet_config: UNetConfig,
    diffusion_config: DiffusionConfig,
    train_config: TrainConfig,
    resume: bool = False,
    mesh=None,
    init_params=None,
    loss=None,
    loss_inputs=None,
) -> Trainer:
    """A `Trainer` for run folder `out`: fresh (from `init_params` when given), or resumed
    from its newest checkpoint. `loss` and `loss_inputs` as `Trainer` takes them.

    A fresh run into a folder that has checkpoints, `resume` without one, and a
    checkpoint made with other settings are errors; a corrupt newest checkpoint
    is an error that leaves it in place.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder path")
    ckpt_dir = out / "checkpoints"
    existing = list_checkpoints(ckpt_dir)
    state = None
    if resume:
        if not existing:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}; drop --resume to start a run")
        saved, flat, _ = read_checkpoint(existing[-1])
        _check_same_run(saved, run_metadata(diffusion_config, unet_config, train_config), existing[-1])
        template = init_state(unet_config, train_config, init_params)
        state = restore_state(flat, template, str(existing[-1]))
        log.info("resumed from %s (step %d)", existing[-1], int(np.asarray(state.step)))
    elif existing:
        raise ValueError(f"{ckpt_dir} already holds checkpoints; pass --resume or choose another --out")
    elif init_params is not None:
        state = init_state(unet_config, train_config, init_params)
    return Trainer(
        data,
        unet_config=unet_config,
        diffusion_config=diffusion_config,
        train_config=train_config,
        state=state,
        mesh=mesh,
        loss=loss,
        loss_inputs=loss_inputs,
    )


def with_overrides(cfg: TrainConfig, **overrides) -> TrainConfig:
    """`cfg` with the overrides that are not None applied."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
