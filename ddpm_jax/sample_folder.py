"""A folder of samples (`ddpm-jax sample`'s output), written so that a run can resume.

Sample i is written to {out}/{i:05}.png (or batches to .npz files) and
depends only on (seed, i): not on the batch size, the number of devices or
processes. The folder's `manifest.json` records what it holds (model and a
digest of its params, seed, sampler, steps, eta, precision, conv, n, file format and, for
npz, the batch size); a run into a folder that holds another run is refused
with what differs, and a run into the same one resumes: batches already on
disk are checked (a torn file does not count) and skipped.
The batch is sharded over the model's mesh; with several processes
(`sharding.initialize_distributed`), process p takes every p-th batch.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from . import atomic
from .folder_lock import folder_lock

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ddpm_jax.samples/1"
# Fields added to the format since, with what every folder written before them used.
ADDED = {"conv": "auto"}
FILE_FORMATS = ("png", "npz")
GRID_SIZE = 64  # samples shown in grid.png at most
_OURS = re.compile(r"^(\d{5}\.png|samples_\d{7}_\d+\.npz|grid\.png)$")


class SampleWriter:
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
        return (
            images.shape == (count, *self.image_shape)
            and images.dtype == np.uint8
            and np.array_equal(indices, np.arange(start, start + count))
        )

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
            log.warning(
                "sampling again: %s %s damaged", ", ".join(p.name for p in bad), "is" if len(bad) == 1 else "are"
            )
        return ok

    def write(self, start, images):
        """NHWC uint8 images numbered from `start`, each file written atomically."""
        from .images import save_images

        if self.fmt == "png":
            save_images(images, str(self.out / "{:05}.png"), start_idx=start)
            return
        atomic.write_with(
            self.npz(start, len(images)),
            lambda f: np.savez(f, images=images, indices=np.arange(start, start + len(images))),
        )

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


def manifest(model, *, model_name: str, seed: int, n: int, file_format: str, batch: int) -> dict:
    """What a sample folder holds: everything its images depend on (`model_name` as given to load it)."""
    from .checkpoint import tensor_digest
    from .weights import flatten_params

    flat = {k: np.asarray(v) for k, v in flatten_params(model.params).items()}
    return {
        "format": MANIFEST_FORMAT,
        "model": str(model_name),
        "params_sha256": tensor_digest(flat),
        "seed": seed,
        "sampler": model.sampler.name,
        "steps": model.num_timesteps,
        "eta": model.eta,
        "precision": model.precision,
        "conv": model.conv,
        "n": n,
        "file_format": file_format,
        "batch": batch if file_format == "npz" else None,  # the npz shard layout
    }


def check_folder(out: Path, want: dict) -> bool:
    """Whether `out` already holds this run (resume); ValueError when it holds
    another run, or samples without a manifest. False for a fresh folder."""
    path = out / MANIFEST
    redo = f"choose another --out, or delete {out} to start over"
    if not path.exists():
        ours = sorted(p.name for p in out.iterdir() if _OURS.match(p.name)) if out.is_dir() else []
        if ours:
            raise ValueError(
                f"--out {out} holds samples ({', '.join(ours[:3])}{' ...' if len(ours) > 3 else ''}) "
                f"but no {MANIFEST} saying how they were made; {redo}"
            )
        return False
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        have = None
    if not isinstance(have, dict) or have.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a ddpm-jax sample manifest; {redo}")
    have = {**ADDED, **have}
    differ = [f"{k} {have.get(k)!r} there, {v!r} now" for k, v in want.items() if have.get(k) != v]
    if differ:
        raise ValueError(f"--out {out} holds another run ({'; '.join(differ)}); {redo}")
    return True


class Filled(NamedTuple):
    """What `fill_folder` did in this process."""

    folder: Path
    sampled: int  # samples drawn now
    kept: int  # samples already on disk, whole, from an earlier run
    batches: int  # this process's share of the batches, drawn or kept
    grid: Path | None  # grid.png of the first samples; None on processes other than 0, or when they are not all there


def fill_folder(model, out, *, n: int, batch: int, seed: int, file_format: str = "png", model_name: str) -> Filled:
    """Write samples 0..n-1 of `model`'s default chain into the folder `out`, `batch` at a time,
    and a grid of the first ones; resumes a run the folder already holds (`check_folder`).
    `model_name` is what the manifest records as the model (a name or path that loads it)."""
    import jax

    rank, world = jax.process_index(), jax.process_count()
    writer = SampleWriter(Path(out).expanduser(), file_format, model.image_shape)
    want = manifest(model, model_name=model_name, seed=seed, n=n, file_format=file_format, batch=batch)
    resuming = check_folder(writer.out, want)
    writer.out.mkdir(parents=True, exist_ok=True)
    if world > 1:  # the processes of one run share the folder by design
        return _fill(model, writer, want, resuming, n, batch, seed, rank, world)
    with folder_lock(writer.out, "sample run"):
        atomic.remove_temporaries(writer.out)  # no other writer now
        return _fill(model, writer, want, resuming, n, batch, seed, rank, world)


def _fill(model, writer: SampleWriter, want: dict, resuming: bool, n, batch, seed, rank, world) -> Filled:
    import jax
    from tqdm import tqdm

    from .images import save_grid

    T, devices = model.num_timesteps, jax.local_device_count()
    if not resuming:
        atomic.write_json(writer.out / MANIFEST, want)
    starts = list(range(0, n, batch))[rank::world]
    sampled = 0
    for start in starts:
        count = min(batch, n - start)
        if writer.done(start, count):
            continue
        # Pad to a multiple of the devices with the next indices; they are dropped.
        padded = math.ceil(count / devices) * devices
        chain = model.denoise_steps(padded, key=seed, first_index=start)
        desc = f"samples {start}-{start + count - 1} of {n}"
        with tqdm(total=T, unit="step", desc=desc) as bar:
            for item in chain:
                bar.update(T - item.step - bar.n)
        writer.write(start, model.to_uint8(np.asarray(item.x)[:count], clip=True))
        sampled += count
    mine = sum(min(batch, n - s) for s in starts)
    shown = writer.first(min(n, GRID_SIZE)) if rank == 0 else None
    grid = save_grid(shown, writer.out / "grid.png") if shown is not None else None
    return Filled(folder=writer.out, sampled=sampled, kept=mine - sampled, batches=len(starts), grid=grid)
