"""`ddpm-jax train`: flags in, `trainer.open_run(...).fit(...)` out (see `ddpm_jax/trainer.py`)."""

from __future__ import annotations

from .common import add_checkpoints, add_data, add_optimizer, add_out, add_preset, check_out_dir, train_config


def add_arguments(p):
    from ..config import PREDICTION_TYPES

    add_data(p)
    add_preset(
        p, "model and process preset (default: digits; with --init, only its training settings)", default="digits"
    )
    p.add_argument(
        "--init",
        metavar="MODEL",
        default=None,
        help="start from this model's params and configs (a name or path `Diffusion.from_pretrained` loads)",
    )
    p.add_argument(
        "--prediction",
        choices=PREDICTION_TYPES,
        default=None,
        help="what the UNet learns to predict (default: the --init model's, else eps); with --init of "
        "another type, the same network learns to read its output anew (fine-tuning eps into v, say)",
    )
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps to reach")
    add_out(p, "run folder")
    add_optimizer(p)
    add_checkpoints(p)
    p.add_argument("--sample-every", type=int, default=2000, help="write an EMA sample grid every N steps (0: never)")


def run(args) -> int:
    import dataclasses
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
    ucfg, dcfg, init = UNET_PRESETS[args.config], DIFFUSION_PRESETS[args.config], None
    enable_compilation_cache()
    if args.init is not None:
        from ..pipeline import Diffusion

        model = Diffusion.from_pretrained(args.init)
        # Trained on every timestep, a distilled model's params make a T-step model again.
        ucfg, dcfg, init = (
            model.unet_config,
            dataclasses.replace(model.diffusion_config, distilled_steps=None),
            model.params,
        )
    if args.prediction is not None:
        dcfg = dataclasses.replace(dcfg, prediction_type=args.prediction)
    data = load_dataset(args.data, ucfg.resolution, ucfg.in_channels, strict=args.strict_data)
    trainer = open_run(
        args.out,
        data,
        unet_config=ucfg,
        diffusion_config=dcfg,
        train_config=tcfg,
        resume=args.resume,
        init_params=init,
    )
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
