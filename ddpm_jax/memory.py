"""How much memory a batch needs at least, and how much a device has.

A request that cannot fit (say `denoise(10**7)`) is refused before anything
is allocated. The estimate is a lower bound, so nothing that fits is refused:
a batch that passes may still need several times more (XLA's temporaries).
"""

from __future__ import annotations

import functools
import math
import os

import jax

from .config import UNetConfig


def sample_bytes(config: UNetConfig) -> int:
    """Bytes (float32) one sample certainly holds at once during a reverse step.

    At the middle block the chain's x and pred_x0 are live, and so is every
    skip activation the UNet keeps for its way up (the release's `hs`: the
    input conv, num_res_blocks per level, each downsample), and the middle
    attention's (positions x positions) weights.
    """
    r, ch, levels = config.resolution, config.ch, len(config.ch_mult)
    floats = 2 * r * r * config.in_channels + r * r * ch
    for i, m in enumerate(config.ch_mult):
        side = r // 2**i
        floats += config.num_res_blocks * side * side * ch * m
        if i < levels - 1:
            floats += (side // 2) ** 2 * ch * m
    floats += (r // 2 ** (levels - 1)) ** 4
    return 4 * floats


@functools.cache
def device_bytes(device=None) -> int:
    """The memory of `device` (default: the first local one): its allocator's
    limit on an accelerator, the machine's RAM on a CPU."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000


SAMPLE_IN_BATCHES = "sample in batches (`ddpm-jax sample --batch B`, or denoise(B, first_index=i) for each batch)"


def check_batch(n: int, config: UNetConfig, devices: int = 1, name: str = "n", fix: str = SAMPLE_IN_BATCHES) -> int:
    """Raise ValueError when n samples (split over `devices`) cannot fit in a
    device's memory by `sample_bytes`' lower bound, saying `fix`; returns n."""
    per_device = math.ceil(n / devices)
    each = sample_bytes(config)
    have = device_bytes()
    if per_device * each > have:
        most = have // each * devices
        raise ValueError(
            f"{name}={n} samples need at least {_size(per_device * each)} per device "
            f"({_size(each)} each at resolution {config.resolution}), more than the device's "
            f"{_size(have)} (at most {most} could fit in one call); {fix}"
        )
    return n
