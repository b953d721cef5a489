"""Multi-host start-up: one process per host (TPU VM worker, or GPU node / task), joined through
jax.distributed into one runtime whose devices form the global mesh.

Explicit flags (--coordinator_address, --num_processes, --process_id) win; otherwise clusters
that jax detects by itself (Cloud TPU pods, SLURM, Open MPI, Kubernetes) are joined with
`--distributed`, and a SLURM job step of several tasks, a Cloud TPU VM that is one worker of
several (TPU_WORKER_HOSTNAMES lists more than one) or a set JAX_COORDINATOR_ADDRESS is joined
automatically. A plain single-host run initialises nothing.

On a CPU host, `parallel.cpu_devices` splits the CPU into that many JAX devices, so that
`parallel.mode=mesh` (or pmap) runs data-parallel over its cores; like joining, this has to
happen before JAX's first computation.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def wanted(coordinator_address: str | None, distributed: bool | None) -> bool:
    """Whether this process should join a multi-process runtime."""
    if distributed is not None:
        return distributed
    if coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def use_cpu_devices(count: int) -> None:
    """Makes JAX's CPU backend `count` devices (0: JAX's default); before any JAX computation."""
    if count:
        jax.config.update("jax_num_cpu_devices", count)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, distributed: bool | None = None) -> None:
    """jax.distributed.initialize() when wanted (before any other jax call); logs the layout."""
    if not wanted(coordinator_address, distributed):
        return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("process %d of %d: %d local devices, %d in all", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
