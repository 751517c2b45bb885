"""`ddpm-jax sample`: denoise fresh noise into one PNG per sample and a grid (`sample_folder.fill_folder`).

Sample i depends only on (seed, i); the folder's manifest lets a run resume
and refuses to mix two runs (see `ddpm_jax/sample_folder.py`). The batch is
sharded over all local devices; with several processes (`--coordinator ...`
or a cluster environment JAX knows), process p takes every p-th batch.
"""

from __future__ import annotations

from .. import samplers
from ..ops import CONVS, SHORT_JOB
from ..sample_folder import FILE_FORMATS
from .common import add_model, add_out, add_precision, add_seed, load_model


def add_arguments(p):
    add_model(p)
    p.add_argument("--n", type=int, default=16, help="number of samples")
    add_seed(p)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps, respaced over T (default: the model's own, all T or a distilled model's N; "
        "dpmpp_2m needs it)",
    )
    p.add_argument(
        "--sampler",
        choices=samplers.names(),
        default=None,
        help="; ".join(f"{s.name}: {s.description}" for s in map(samplers.get, samplers.names()))
        + " (linspace samplers need --steps < T; default: the model's own, ddpm or a distilled model's DDIM)",
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help=f"eta of {', '.join(samplers.takes_eta())} (default 0: deterministic); refused for the others",
    )
    add_precision(p)
    p.add_argument(
        "--conv",
        choices=CONVS,
        default="auto",
        help=f"how the 3x3 convolutions run: auto (default): XLA's for a job of at most {SHORT_JOB} "
        "pictures x steps, which compiles in half the time, else Winograd on the CPU where it wins; "
        "xla; winograd. The two agree to ~1e-5: pin one to compare short jobs with long ones",
    )
    p.add_argument("--batch", type=int, default=64, help="samples per batch (all devices together)")
    p.add_argument(
        "--format",
        choices=FILE_FORMATS,
        default="png",
        help="png: one file per sample; npz: one uint8 array file per batch",
    )
    add_out(p)
    g = p.add_argument_group("several processes (jax.distributed)")
    g.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:12345")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)


def _check_flags(args) -> tuple[int, int, samplers.Sampler | None]:
    """Every flag's range, before anything is loaded; returns (n, batch, sampler or None: the model's own)."""
    from ..checks import check_int
    from ..config import LIMITS
    from ..pipeline import SEED_RANGE

    n = check_int("--n", args.n, 1, 10**9)
    batch = check_int("--batch", args.batch, 1, 10**6)
    if args.steps is not None:
        check_int("--steps", args.steps, 1, LIMITS["num_diffusion_timesteps"][1])
    # An eta for a sampler without one is refused here (for the model's own sampler, once it is loaded).
    sampler = None if args.sampler is None else samplers.get(args.sampler, args.eta)
    check_int("--seed", args.seed, *SEED_RANGE)  # no JAX call before jax.distributed.initialize
    return n, batch, sampler


def run(args) -> int:
    import jax

    from ..ops import conv_for_job
    from ..sample_folder import fill_folder
    from ..sharding import initialize_distributed

    n, batch, sampler = _check_flags(args)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    model = load_model(args.model, args.out, sharded=True, precision=args.precision)
    if sampler is None:  # the model's own chain: a distilled model's N steps unless --steps says otherwise
        sampler = model.sampler.with_eta(args.eta)
        steps = model.num_timesteps if args.steps is None else args.steps
    else:
        steps = args.steps
    steps = sampler.check_steps(steps, model.diffusion_config.num_diffusion_timesteps)
    model = model.respaced(steps, sampler, conv=conv_for_job(args.conv, n * steps))
    filled = fill_folder(
        model, args.out, n=n, batch=batch, seed=args.seed, file_format=args.format, model_name=args.model
    )
    done = f"sampled {filled.sampled}, kept {filled.kept} already there"
    if filled.grid is not None:
        print(f"{n} samples in {filled.folder} ({done}); the grid {filled.grid}")
    else:
        print(
            f"process {jax.process_index()} of {jax.process_count()}: its {filled.batches} batches are in "
            f"{filled.folder} ({done})"
        )
    return 0
