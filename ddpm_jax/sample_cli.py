"""`ddpm-jax sample`: denoise fresh noise into one PNG per sample and a grid.

Sample i is written to {out}/{i:05}.png (or batches to .npz files) and
depends only on (seed, i): not on the batch size, the number of devices or
processes. The folder's `manifest.json` records what it holds (model and a
digest of its params, seed, sampler, steps, eta, precision, n, file format and, for
npz, the batch size); a run into a folder that holds another run is refused
with what differs, and a run into the same one resumes: batches already on
disk are checked (a torn file does not count) and skipped.
The batch is sharded over all local devices; with several processes
(`--coordinator ...` or a cluster environment JAX knows), process p takes
every p-th batch.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .ops import PRECISIONS
from .pipeline import SAMPLERS

log = logging.getLogger(__name__)
DEFAULT_MODEL = "digits"  # the bundled model
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ddpm_jax.samples/1"
_OURS = re.compile(r"^(\d{5}\.png|samples_\d{7}_\d+\.npz|grid\.png)$")


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
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="float32",
                   help="how the UNet computes: float32; bfloat16; mixed_bf16 (bfloat16 operands, "
                        "float32 accumulation; see bench/precision.py for how far it moves the samples)")
    p.add_argument("--batch", type=int, default=64, help="samples per batch (all devices together)")
    p.add_argument("--format", choices=("png", "npz"), default="png",
                   help="png: one file per sample; npz: one uint8 array file per batch")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("several processes (jax.distributed)")
    g.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:12345")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)


class _Writer:
    """Where batch [start, start + count) goes, and whether it is already there, whole."""

    def __init__(self, out: Path, fmt: str, image_shape: tuple[int, int, int]):
        self.out, self.fmt, self.image_shape = out, fmt, image_shape

    def png(self, i: int) -> Path:
        return self.out / f"{i:05}.png"

    def npz(self, start: int, count: int) -> Path:
        return self.out / f"samples_{start:07}_{count}.npz"

    def _png_ok(self, path: Path) -> bool:
        h, w, c = self.image_shape
        try:
            with Image.open(path) as im:
                im.load()  # decodes every row: a truncated file raises
                return im.size == (w, h) and im.mode == ("L" if c == 1 else "RGB")
        except (OSError, ValueError):
            return False

    def _npz_ok(self, path: Path, start: int, count: int) -> bool:
        try:
            with np.load(path, allow_pickle=False) as f:
                images, indices = f["images"], f["indices"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return False
        return (images.shape == (count, *self.image_shape) and images.dtype == np.uint8
                and np.array_equal(indices, np.arange(start, start + count)))

    def done(self, start, count) -> bool:
        """Every file of the batch is there and whole (a torn one is redone)."""
        if self.fmt == "npz":
            path = self.npz(start, count)
            ok = path.exists() and self._npz_ok(path, start, count)
            bad = [path] if path.exists() and not ok else []
        else:
            paths = [self.png(i) for i in range(start, start + count)]
            bad = [p for p in paths if p.exists() and not self._png_ok(p)]
            ok = not bad and all(p.exists() for p in paths)
        if bad:
            log.warning("sampling again: %s %s damaged", ", ".join(p.name for p in bad),
                        "is" if len(bad) == 1 else "are")
        return ok

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


def manifest(args, model, n: int, batch: int) -> dict:
    """What a sample folder holds: everything its images depend on."""
    from .checkpoint import tensor_digest
    from .weights import flatten_params

    flat = {k: np.asarray(v) for k, v in flatten_params(model.params).items()}
    return {
        "format": MANIFEST_FORMAT,
        "model": str(args.model),
        "params_sha256": tensor_digest(flat),
        "seed": args.seed,
        "sampler": model.sampler,
        "steps": model.num_timesteps,
        "eta": model.eta if model.sampler == "ddim" else None,
        "precision": model.precision,
        "n": n,
        "file_format": args.format,
        "batch": batch if args.format == "npz" else None,  # the npz shard layout
    }


def check_folder(out: Path, want: dict) -> bool:
    """Whether `out` already holds this run (resume); ValueError when it holds
    another run, or samples without a manifest. False for a fresh folder."""
    path = out / MANIFEST
    redo = f"choose another --out, or delete {out} to start over"
    if not path.exists():
        ours = sorted(p.name for p in out.iterdir() if _OURS.match(p.name)) if out.is_dir() else []
        if ours:
            raise ValueError(f"--out {out} holds samples ({', '.join(ours[:3])}{' ...' if len(ours) > 3 else ''}) "
                             f"but no {MANIFEST} saying how they were made; {redo}")
        return False
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        have = None
    if not isinstance(have, dict) or have.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a ddpm-jax sample manifest; {redo}")
    differ = [f"{k} {have.get(k)!r} there, {v!r} now" for k, v in want.items() if have.get(k) != v]
    if differ:
        raise ValueError(f"--out {out} holds another run ({'; '.join(differ)}); {redo}")
    return True


def _check_flags(args) -> tuple[int, int]:
    """Every flag's range, before anything is loaded; returns (n, batch)."""
    from .checks import check_float, check_int
    from .cli import check_out_dir
    from .config import LIMITS
    from .pipeline import SEED_RANGE

    n = check_int("--n", args.n, 1, 10**9)
    batch = check_int("--batch", args.batch, 1, 10**6)
    if args.steps is not None:
        check_int("--steps", args.steps, 1, LIMITS["num_diffusion_timesteps"][1])
    check_float("--eta", args.eta, 0.0, 1.0)
    check_int("--seed", args.seed, *SEED_RANGE)  # no JAX call before jax.distributed.initialize
    check_out_dir(args.out)
    return n, batch


def run(args) -> int:
    import jax
    from tqdm import tqdm

    from .atomic import remove_temporaries, write_json
    from .compile_cache import enable_compilation_cache
    from .images import save_grid
    from .pipeline import Diffusion
    from .sharding import data_mesh, initialize_distributed

    n, batch = _check_flags(args)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    enable_compilation_cache()
    rank, world = jax.process_index(), jax.process_count()
    mesh = data_mesh() if jax.local_device_count() > 1 else None
    model = Diffusion.from_pretrained(args.model, mesh=mesh, precision=args.precision)
    if args.steps is not None or args.sampler != "ddpm":
        model = model.respaced(args.steps, args.sampler, args.eta)
    T, devices = model.num_timesteps, jax.local_device_count()
    writer = _Writer(Path(args.out).expanduser(), args.format, model.image_shape)
    want = manifest(args, model, n, batch)
    resuming = check_folder(writer.out, want)
    writer.out.mkdir(parents=True, exist_ok=True)
    if world == 1:  # with several processes, another one may be writing now
        remove_temporaries(writer.out)
    if not resuming:
        write_json(writer.out / MANIFEST, want)
    starts = list(range(0, n, batch))[rank::world]
    sampled = 0
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
        sampled += count
    mine = sum(min(batch, n - s) for s in starts)
    done = f"sampled {sampled}, kept {mine - sampled} already there"
    shown = writer.first(min(n, 64)) if rank == 0 else None
    if shown is not None:
        grid = save_grid(shown, writer.out / "grid.png")
        print(f"{n} samples in {writer.out} ({done}); the grid {grid}")
    else:
        print(f"process {rank} of {world}: its {len(starts)} batches are in {writer.out} ({done})")
    return 0
