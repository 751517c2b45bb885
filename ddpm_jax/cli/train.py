"""`ddpm-jax train`: flags in, `trainer.open_run(...).fit(...)` out (see `ddpm_jax/trainer.py`)."""

from __future__ import annotations

import argparse

from .common import add_out, add_preset, add_seed, check_out_dir


def add_arguments(p):
    p.add_argument(
        "--data", required=True, help="'digits' (scikit-learn's, training split), an image folder, or a .npy/.npz"
    )
    add_preset(p, "model and process preset (default: digits)", default="digits")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps to reach")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    add_out(p, "run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps")
    p.add_argument("--grad-clip", type=float, default=None, help="global gradient norm clip")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay per step")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (--flip / --no-flip; default: the preset's)",
    )
    add_seed(p, default=None)
    p.add_argument(
        "--strict-data", action="store_true", help="stop on a bad file in an image folder instead of skipping it"
    )
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--sample-every", type=int, default=2000, help="write an EMA sample grid every N steps (0: never)")
    p.add_argument("--log-every", type=int, default=50, help="log.jsonl line every N steps")


def run(args) -> int:
    import logging

    from ..compile_cache import enable_compilation_cache
    from ..config import DIFFUSION_PRESETS, UNET_PRESETS
    from ..data import load_dataset
    from ..train import TRAIN_PRESETS, TrainConfig
    from ..trainer import RunOptions, open_run, with_overrides
    from ..unet import count_params

    check_out_dir(args.out)
    options = RunOptions(
        steps=args.steps,
        ckpt_every=args.ckpt_every,
        keep=args.keep,
        sample_every=args.sample_every,
        log_every=args.log_every,
    )
    tcfg = with_overrides(
        TRAIN_PRESETS.get(args.config, TrainConfig()),
        batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        random_flip=args.flip,
        seed=args.seed,
    )
    ucfg, dcfg = UNET_PRESETS[args.config], DIFFUSION_PRESETS[args.config]
    enable_compilation_cache()
    data = load_dataset(args.data, ucfg.resolution, ucfg.in_channels, strict=args.strict_data)
    trainer = open_run(args.out, data, unet_config=ucfg, diffusion_config=dcfg, train_config=tcfg, resume=args.resume)
    logging.getLogger(__name__).info(
        "data: %d images %s from %s; model: %s params; %s%s",
        data.shape[0],
        tuple(data.shape[1:]),
        args.data,
        f"{count_params(trainer.state.params):,}",
        tcfg,
        f"; data parallel over {trainer.mesh.size} devices" if trainer.mesh is not None else "",
    )
    if tcfg.batch_size > data.shape[0]:
        logging.getLogger(__name__).warning(
            "the batch (%d) is larger than the data (%d images): every batch repeats images "
            "(uniform draws with replacement); fine for a tiny set, but check --data",
            tcfg.batch_size,
            data.shape[0],
        )
    trainer.fit(args.out, options)
    return 0
