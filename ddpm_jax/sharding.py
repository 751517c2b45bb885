"""Data parallelism with jax.sharding: a 1-D 'data' mesh, batch sharded, params replicated.

XLA partitions the jitted sampler and train step from the input shardings
(GSPMD); nothing here splits work by hand. Across processes, each one samples
its own share of the sample indices on its local devices.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    """A mesh over `devices` (default: this process's devices) with one 'data' axis."""
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (DATA,))


def replicate(tree, mesh: Mesh):
    """Every leaf copied to every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(x, mesh: Mesh):
    """Split the leading (batch) axis over the mesh's 'data' axis."""
    if x.shape[0] % mesh.size:
        raise ValueError(
            f"a batch of {x.shape[0]} does not split over {mesh.size} devices; "
            f"use a batch size that is a multiple of {mesh.size}"
        )
    return jax.device_put(x, NamedSharding(mesh, P(DATA)))


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """jax.distributed.initialize with explicit flags, or from the environment JAX reads.

    Call before any other JAX work. Safe to call in a single process: with no
    flags and no cluster environment it does nothing.
    """
    if coordinator is None and num_processes is None and process_id is None:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as err:  # no cluster environment found
            log.debug("single process: %s", err)
            return
    else:
        if None in (coordinator, num_processes, process_id):
            raise ValueError("--coordinator, --num-processes and --process-id go together")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())
