"""`ddpm-jax train`: train a DDPM, checkpoint it, resume it, export its EMA params.

The run folder holds checkpoints/ckpt-<step>.safetensors (the whole train
state), log.jsonl (loss and steps/s), samples/step-<step>.png (EMA samples)
and ema.safetensors, the EMA params in the format `from_pretrained` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p):
    from .config import UNET_PRESETS

    p.add_argument("--data", required=True,
                   help="'digits' (scikit-learn's, training split), an image folder, or a .npy/.npz")
    p.add_argument("--config", default="digits", choices=sorted(UNET_PRESETS),
                   help="model and process preset (default: digits)")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps to reach")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --out")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps")
    p.add_argument("--grad-clip", type=float, default=None, help="global gradient norm clip")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay per step")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (--flip / --no-flip; default: the preset's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--strict-data", action="store_true",
                   help="stop on a bad file in an image folder instead of skipping it")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--sample-every", type=int, default=2000,
                   help="write an EMA sample grid every N steps (0: never)")
    p.add_argument("--log-every", type=int, default=50, help="log.jsonl line every N steps")


def train_config_from_args(args):
    """The preset's TrainConfig (or the release's defaults) with flags applied."""
    from .train import TRAIN_PRESETS, TrainConfig

    cfg = TRAIN_PRESETS.get(args.config, TrainConfig())
    overrides = {
        "batch_size": args.batch, "learning_rate": args.lr, "warmup_steps": args.warmup,
        "grad_clip": args.grad_clip, "ema_decay": args.ema_decay,
        "random_flip": args.flip, "seed": args.seed,
    }
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def _run_metadata(dcfg, ucfg, tcfg) -> dict:
    from .config import config_to_dict

    return {"diffusion_config": config_to_dict(dcfg), "unet_config": config_to_dict(ucfg),
            "train_config": config_to_dict(tcfg)}


def _check_same_run(saved: dict, wanted: dict, path):
    diffs = [
        f"{group}.{k}: checkpoint {saved.get(group, {}).get(k)!r} != requested {v!r}"
        for group, fields in wanted.items()
        for k, v in fields.items()
        if saved.get(group, {}).get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {path} was made with other settings ({'; '.join(diffs)}); "
            "resume with the same --config and flags, or train into a new --out"
        )


def _json_ready(meta: dict) -> dict:
    return json.loads(json.dumps(meta))


def run(args) -> int:
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from . import images
    from .checkpoint import list_checkpoints, read_checkpoint, restore_state, save_checkpoint
    from .coefficients import make_coefficients
    from .config import DIFFUSION_PRESETS, UNET_PRESETS
    from .data import load_dataset
    from .pipeline import Diffusion
    from .sharding import data_mesh, replicate
    from .train import init_state, make_train_step
    from .unet import count_params
    from .weights import save_weights

    if args.steps < 0 or args.ckpt_every < 1 or args.log_every < 1 or args.sample_every < 0:
        raise ValueError("--steps must be >= 0 and --ckpt-every/--log-every >= 1, --sample-every >= 0")
    ucfg, dcfg = UNET_PRESETS[args.config], DIFFUSION_PRESETS[args.config]
    tcfg = train_config_from_args(args)
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    meta = _json_ready(_run_metadata(dcfg, ucfg, tcfg))

    state = init_state(ucfg, tcfg)
    existing = list_checkpoints(ckpt_dir)
    if args.resume:
        if not existing:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}; drop --resume to start a run")
        saved, flat, _ = read_checkpoint(existing[-1])
        _check_same_run(saved, meta, existing[-1])
        state = jax.tree.map(jnp.asarray, restore_state(flat, state, str(existing[-1])))
        log.info("resumed from %s (step %d)", existing[-1], int(state.step))
    elif existing:
        raise ValueError(f"{ckpt_dir} already holds checkpoints; pass --resume or choose another --out")

    data = jnp.asarray(load_dataset(args.data, ucfg.resolution, ucfg.in_channels, strict=args.strict_data))
    log.info("data: %d images %s from %s; model: %s params; %s",
             data.shape[0], tuple(data.shape[1:]), args.data, f"{count_params(state.params):,}", tcfg)
    coeffs = make_coefficients(dcfg)
    mesh = data_mesh() if jax.local_device_count() > 1 else None
    train_step = make_train_step(ucfg, tcfg, mesh)
    if mesh is not None:  # data parallel: replicated state and data, batch sharded in the step
        state, data, coeffs = replicate((state, data, coeffs), mesh)
        log.info("data parallel over %d devices", mesh.size)
    step = int(state.step)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.jsonl", "a") as log_file, tqdm(
        initial=step, total=max(args.steps, step), unit="step", desc="train", mininterval=2.0
    ) as bar:
        t0, s0, loss_sum = time.perf_counter(), step, 0.0
        while step < args.steps:
            state, metrics = train_step(state, data, coeffs)
            step += 1
            loss_sum = loss_sum + metrics["loss"]  # stays on the device until logged
            bar.update(1)
            if step % args.log_every == 0 or step == args.steps:
                loss = float(loss_sum) / (step - s0)  # waits for the queued steps
                dt = time.perf_counter() - t0
                rec = {"step": step, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                       "steps_per_s": (step - s0) / dt, "time": time.time()}
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_s=f"{rec['steps_per_s']:.2f}")
                t0, s0, loss_sum = time.perf_counter(), step, 0.0
            if step % args.ckpt_every == 0 or step == args.steps:
                save_checkpoint(ckpt_dir, state, meta, keep=args.keep)
            if args.sample_every and step % args.sample_every == 0:
                x = Diffusion(dcfg, ucfg, state.ema_params, chunk_size=50).denoise(16, key=0)
                images.save_grid(images.to_uint8(x, clip=True), out / "samples" / f"step-{step:08d}.png")
    save_weights(out / "ema.safetensors", state.ema_params, dcfg, ucfg)
    log.info("step %d: EMA params written to %s", step, out / "ema.safetensors")
    return 0
