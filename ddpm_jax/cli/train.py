"""`ddpm-jax train`: flags in, `trainer.open_run(...).fit(...)` out (see `ddpm_jax/trainer.py`)."""

from __future__ import annotations

from .common import add_checkpoints, add_data, add_optimizer, add_out, add_preset, check_out_dir, train_config


def add_arguments(p):
    add_data(p)
    add_preset(p, "model and process preset (default: digits)", default="digits")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps to reach")
    add_out(p, "run folder")
    add_optimizer(p)
    add_checkpoints(p)
    p.add_argument("--sample-every", type=int, default=2000, help="write an EMA sample grid every N steps (0: never)")


def run(args) -> int:
    import logging

    from ..compile_cache import enable_compilation_cache
    from ..config import DIFFUSION_PRESETS, UNET_PRESETS
    from ..data import load_dataset
    from ..train import TRAIN_PRESETS, TrainConfig
    from ..trainer import RunOptions, open_run
    from ..unet import count_params

    check_out_dir(args.out)
    options = RunOptions(
        steps=args.steps,
        ckpt_every=args.ckpt_every,
        keep=args.keep,
        sample_every=args.sample_every,
        log_every=args.log_every,
    )
    tcfg = train_config(TRAIN_PRESETS.get(args.config, TrainConfig()), args)
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
