"""`ddpm-jax sample`: denoise fresh noise into one PNG per sample and a grid.

Sample i is written to {out}/{i:05}.png (or batches to .npz files) and
depends only on (seed, i): not on the batch size, the number of devices or
processes. Batches already on disk are skipped, so an interrupted run resumes.
The batch is sharded over all local devices; with several processes
(`--coordinator ...` or a cluster environment JAX knows), process p takes
every p-th batch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .pipeline import SAMPLERS

log = logging.getLogger(__name__)
DEFAULT_MODEL = "digits"  # the bundled model


def add_arguments(p):
    p.add_argument("--model", default=DEFAULT_MODEL, required=DEFAULT_MODEL is None,
                   help="a bundled or pretrained name, or a .safetensors path")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps, respaced over T (default: all T; dpmpp_2m needs it)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                   help="ddpm: Alg. 2 (strided when --steps < T); ddim: Song et al. eq. 12; "
                        "dpmpp_2m(_sde): DPM-Solver++(2M) (Lu et al. 2022), --steps < T")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM's eta (0: deterministic)")
    p.add_argument("--batch", type=int, default=64, help="samples per batch (all devices together)")
    p.add_argument("--format", choices=("png", "npz"), default="png",
                   help="png: one file per sample; npz: one uint8 array file per batch")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("several processes (jax.distributed)")
    g.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:12345")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)


class _Writer:
    """Where batch [start, start + count) goes, and whether it is already there."""

    def __init__(self, out: Path, fmt: str):
        self.out, self.fmt = out, fmt

    def png(self, i: int) -> Path:
        return self.out / f"{i:05}.png"

    def npz(self, start: int, count: int) -> Path:
        return self.out / f"samples_{start:07}_{count}.npz"

    def done(self, start, count) -> bool:
        if self.fmt == "npz":
            return self.npz(start, count).exists()
        return all(self.png(i).exists() for i in range(start, start + count))

    def write(self, start, images):
        from .atomic import write_with
        from .images import save_images

        if self.fmt == "png":
            save_images(images, str(self.out / "{:05}.png"), start_idx=start)
            return
        write_with(self.npz(start, len(images)),
                   lambda f: np.savez(f, images=images, indices=np.arange(start, start + len(images))))

    def first(self, n) -> np.ndarray | None:
        """The first n images, if they are all on disk."""
        if self.fmt == "png":
            paths = [self.png(i) for i in range(n)]
            if not all(p.exists() for p in paths):
                return None
            return np.stack([np.asarray(Image.open(p)).reshape(*Image.open(p).size[::-1], -1) for p in paths])
        shards = sorted(self.out.glob("samples_*.npz"))
        if not shards:
            return None
        with np.load(shards[0]) as f:
            return f["images"][:n]


def run(args) -> int:
    import jax
    from tqdm import tqdm

    from .compile_cache import enable_compilation_cache
    from .images import save_grid
    from .pipeline import Diffusion, _check_int
    from .sharding import data_mesh, initialize_distributed

    n = _check_int("--n", args.n, 1, 10**9)
    batch = _check_int("--batch", args.batch, 1, 10**6)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    enable_compilation_cache()
    rank, world = jax.process_index(), jax.process_count()
    mesh = data_mesh() if jax.local_device_count() > 1 else None
    model = Diffusion.from_pretrained(args.model, mesh=mesh)
    if args.steps is not None or args.sampler != "ddpm":
        model = model.respaced(args.steps, args.sampler, args.eta)
    T, devices = model.num_timesteps, jax.local_device_count()
    writer = _Writer(Path(args.out), args.format)
    writer.out.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, n, batch))[rank::world]
    for start in starts:
        count = min(batch, n - start)
        if writer.done(start, count):
            continue
        # Pad to a multiple of the devices with the next indices; they are dropped.
        padded = math.ceil(count / devices) * devices
        chain = model.denoise_steps(padded, key=args.seed, first_index=start)
        desc = f"samples {start}-{start + count - 1} of {n}"
        with tqdm(total=T, unit="step", desc=desc) as bar:
            for item in chain:
                bar.update(T - item.step - bar.n)
        writer.write(start, model.to_uint8(np.asarray(item.x)[:count], clip=True))
    shown = writer.first(min(n, 64)) if rank == 0 else None
    if shown is not None:
        grid = save_grid(shown, writer.out / "grid.png")
        print(f"wrote {n} samples to {writer.out} and the grid {grid}")
    else:
        print(f"process {rank} of {world}: wrote its {len(starts)} batches to {writer.out}")
    return 0
