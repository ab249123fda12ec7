"""The devices and processes a run spans: multi-process start-up, the mesh, and the few
collectives the host side needs (who writes, waiting for every process, fetching arrays).

Multi-host: every process runs the same command; `initialize_distributed` joins them
(`jax.distributed.initialize`, from an explicit coordinator or the cluster's environment:
TPU pods, SLURM, Open MPI, ...) and the mesh spans all processes' devices. Errors are
`ValueError`s naming the argument (the CLI layer turns them into flag lines).
"""

import jax
import numpy as np
from jax.sharding import Mesh

from hyperface_jax.engine.ring import AXIS


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, distributed: bool = False) -> None:
    """Join a multi-process run when asked: explicitly (`coordinator_address` with
    `num_processes` and `process_id`) or, with `distributed` alone, from the cluster's
    environment (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes). Must run before
    anything touches a JAX backend; nothing happens when neither is given."""
    if not (coordinator_address or distributed):
        if num_processes or process_id >= 0:
            raise ValueError("num_processes/process_id need coordinator_address "
                             "(or distributed for cluster auto-detection)")
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"coordinator_address={coordinator_address} needs num_processes >= 1 and "
                f"0 <= process_id < num_processes, got {num_processes} and {process_id}")
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"could not join the multi-process run ({first[:200]})") from None


def make_mesh(devices: str | int) -> Mesh | None:
    """The one-axis mesh over `devices` ('all' or a count); None for the single-device path.

    With one device and one process the `Local` placement runs: no collectives to pay for
    (a mesh of one computes the same numbers through the same solver).
    """
    available = jax.devices()
    if devices == "all":
        count = len(available)
    else:
        try:
            count = int(devices)
        except ValueError:
            raise ValueError(f"devices must be 'all' or a positive count, got {devices!r}")\
                from None
        if not 1 <= count <= len(available):
            raise ValueError(f"devices={count} but {len(available)} device(s) are available "
                             f"({jax.default_backend()}); pass devices=all or a smaller count")
        if jax.process_count() > 1 and count != len(available):
            raise ValueError(f"devices={count} in a run of {jax.process_count()} processes; "
                             "multi-process runs use every device: pass devices=all")
    if count == 1 and jax.process_count() == 1:
        return None
    return Mesh(np.asarray(available[:count]), (AXIS,))


def is_writer() -> bool:
    """Process 0 alone writes outputs (every process takes part in checkpoints)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (no-op in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(array) -> np.ndarray:
    """The full array on every process (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
