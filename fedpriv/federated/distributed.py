"""Multi-host runs on JAX's own multi-process runtime (DESIGN §5: existing engines only).

Every process runs the same program (``python experiments/run.py ...`` once per process, e.g.
one per SLURM task) and calls :func:`initialize_distributed` before anything touches a JAX
device. ``jax.devices()`` then lists every process's devices, the ``sharded`` client backend
puts its mesh over all of them, and each process feeds its own devices their hospitals
(``fedpriv.federated.client_mesh``). The round's results come back replicated, so every
process holds the same model, observations and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

logger = logging.getLogger(__name__)

# What a SLURM step tells each task (jax's own SLURM detection reads the same variables).
SLURM_PROCESS_COUNT = "SLURM_NTASKS"
SLURM_JOB = "SLURM_JOB_ID"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """How this process joins a multi-process run (``impl.distributed``).

    Attributes:
      enabled: ``False``: one process, nothing to join. ``True``: call
        ``jax.distributed.initialize``; settings left ``None`` come from the cluster
        environment (SLURM, Open MPI, ...), as JAX detects them.
      coordinator_address: ``"host:port"`` of process 0's coordinator service.
      num_processes: processes in the run.
      process_id: this process's index in ``[0, num_processes)``.
    """

    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"impl.distributed.enabled must be true or false, got {self.enabled!r}")
        explicit = {name: getattr(self, name) for name in ("coordinator_address", "num_processes", "process_id")
                    if getattr(self, name) is not None}
        if explicit and not self.enabled:
            raise ValueError(f"impl.distributed.enabled is false but {sorted(explicit)} are set; set "
                             "impl.distributed.enabled=true or leave them null")
        if self.coordinator_address is not None:
            host, _, port = str(self.coordinator_address).rpartition(":")
            if not (isinstance(self.coordinator_address, str) and host and port.isdigit()):
                raise ValueError(f"impl.distributed.coordinator_address must be 'host:port', "
                                 f"got {self.coordinator_address!r}")
        if self.num_processes is not None and not (isinstance(self.num_processes, int) and self.num_processes >= 1):
            raise ValueError(f"impl.distributed.num_processes must be an integer >= 1 or null, "
                             f"got {self.num_processes!r}")
        if self.process_id is not None:
            upper = self.num_processes if self.num_processes is not None else float("inf")
            if not (isinstance(self.process_id, int) and 0 <= self.process_id < upper):
                raise ValueError(f"impl.distributed.process_id must be an integer in [0, num_processes="
                                 f"{self.num_processes}), got {self.process_id!r}")


def initialize_distributed(config: DistributedConfig) -> bool:
    """Joins the multi-process run ``config`` describes; a no-op for a single process.

    Must run before anything touches a JAX device (JAX refuses to join afterwards). Safe to
    call twice: a process that has already joined stays as it is.

    Args:
      config: the ``impl.distributed`` settings.

    Returns:
      ``True`` when this process is part of a multi-process run, ``False`` for one process.

    Raises:
      ValueError: enabled, but neither the config nor the environment says where the
        coordinator is.
      RuntimeError: JAX's backend was started before joining (JAX's own message).
    """
    if not config.enabled:
        return False
    if jax.distributed.is_initialized():
        return True
    if _process_count(config) == 1:
        logger.info("impl.distributed: one process, nothing to join")
        return False
    try:
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes, process_id=config.process_id)
    except ValueError as error:  # JAX found no cluster environment to fill the gaps
        raise ValueError(f"impl.distributed.enabled=true but the coordinator is unknown ({error}); run under "
                         "SLURM (srun) or set impl.distributed.coordinator_address, num_processes and "
                         "process_id") from error
    logger.info("joined the run as process %d of %d (%d devices in all)", jax.process_index(),
                jax.process_count(), jax.device_count())
    return True


def _process_count(config: DistributedConfig) -> int | None:
    """The run's process count if the config or a SLURM step states it, else ``None`` (JAX detects it)."""
    if config.num_processes is not None:
        return config.num_processes
    if SLURM_JOB in os.environ and os.environ.get(SLURM_PROCESS_COUNT, "").isdigit():
        return int(os.environ[SLURM_PROCESS_COUNT])
    return None


def is_lead_process() -> bool:
    """Whether this process writes the run's files: process 0 (the only one on one machine)."""
    return jax.process_index() == 0
