"""`ddpm-jax distill`: flags in, `distill.distill(...)` out (progressive distillation, see `ddpm_jax/distill.py`)."""

from __future__ import annotations

import argparse

from .common import MODEL_HELP, add_checkpoints, add_data, add_model, add_optimizer, add_out, train_config


def add_arguments(p):
    from ..config import PREDICTION_TYPES
    from ..distill import DISTILL_TRAIN, WEIGHTINGS

    add_model(p, f"the teacher: {MODEL_HELP} (a distilled model continues from its own steps)")
    add_data(p)
    add_out(p, "run folder: distill.json, a folder per round, distilled.safetensors")
    p.add_argument(
        "--from-steps",
        type=int,
        default=None,
        help="the teacher's chain of trailing timesteps to start from: --to-steps times a power of two, "
        "at most T (default: a distilled teacher's own steps, else the largest power of two <= T, 512 for T=1000)",
    )
    p.add_argument("--to-steps", type=int, default=4, help="the last student's sampling steps (default 4; 1 allowed)")
    p.add_argument("--steps-per-round", type=int, required=True, help="optimizer steps in each round (each halving)")
    p.add_argument(
        "--prediction",
        choices=PREDICTION_TYPES,
        default="v",
        help="what the students predict (default v; eps fails at few steps, Salimans & Ho 2022 Sec. 4)",
    )
    p.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="truncated_snr",
        help="the x_0 loss weight: max(SNR, 1) (default) or SNR + 1 (Sec. 4)",
    )
    p.add_argument(
        "--clip-teacher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clip the teacher's predicted x_0 to [-1, 1] in its DDIM steps, as sampling does (default: on)",
    )
    add_optimizer(p, DISTILL_TRAIN, decay_default="--steps-per-round: the paper's anneal to 0 in each round")
    add_checkpoints(p, "where a killed run stopped, in any round")


def run(args) -> int:
    import dataclasses
    import logging

    from ..data import load_dataset
    from ..distill import DISTILL_TRAIN, DistillPlan, distill, round_steps
    from ..trainer import RunOptions
    from .common import load_model

    options = RunOptions(
        steps=args.steps_per_round,
        ckpt_every=args.ckpt_every,
        keep=args.keep,
        sample_every=args.steps_per_round,  # a grid at the end of each round
        log_every=args.log_every,
    )
    plan = DistillPlan(
        from_steps=args.from_steps,
        to_steps=args.to_steps,
        prediction=args.prediction,
        weighting=args.weighting,
        clip_teacher=args.clip_teacher,
    )
    tcfg = train_config(DISTILL_TRAIN, args)
    if args.decay_steps is None:
        tcfg = dataclasses.replace(tcfg, decay_steps=args.steps_per_round)
    teacher = load_model(args.model, args.out)  # checks --out first
    dcfg, ucfg = teacher.diffusion_config, teacher.unet_config
    students = round_steps(dcfg, plan.from_steps, plan.to_steps)
    data = load_dataset(args.data, ucfg.resolution, ucfg.in_channels, strict=args.strict_data)
    logging.getLogger(__name__).info(
        "data: %d images %s from %s; rounds to %s steps, %d optimizer steps each; %s",
        data.shape[0],
        tuple(data.shape[1:]),
        args.data,
        students,
        options.steps,
        tcfg,
    )
    final = distill(
        args.out,
        data,
        (dcfg, ucfg, teacher.params),
        plan=plan,
        train_config=tcfg,
        options=options,
        resume=args.resume,
    )
    steps = f"{students[-1]} step" + ("s" if students[-1] > 1 else "")
    print(f"distilled to {steps}: {final} (sample it: ddpm-jax sample --model {final})")
    return 0
