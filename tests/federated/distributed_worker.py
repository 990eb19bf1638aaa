"""One process of a multi-process run of a tiny federation: run once per process id.

    python -m tests.federated.distributed_worker PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Joins ``jax.distributed`` over the loopback coordinator (a no-op for one process), trains
DP-FedAvg with Poisson client sampling on the ``sharded`` backend over every process's
devices, and writes what it ended with to ``OUT_DIR/process_<id>.npz``: the final params,
the updates the server observed, and how many client rows lived on this process's devices.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from fedpriv.federated import DistributedConfig, initialize_distributed

NUM_CLIENTS = 5  # does not divide the two processes' devices: the round is padded with an absent client


def run_federation(backend: str) -> dict[str, np.ndarray]:
    """The tiny federation's results, flattened to named arrays."""
    import jax

    from fedpriv.defenses.server_stages import ServerPipeline
    from tests.federated.conftest import dp_fedavg_plan
    from tests.federated.sharded_cases import trained

    plan = dp_fedavg_plan(l2_clip_norm=1.0, noise_multiplier=1.0, num_clients=NUM_CLIENTS, client_sampling_rate=0.6)
    params, observed, _ = trained(backend, num_clients=NUM_CLIENTS, plan=plan, algorithm="fedsgd", steps=1, batch=1,
                                  rounds=3, client_sampling_rate=0.6,
                                  pipeline=ServerPipeline(aggregator=plan.server_noise()),
                                  client_stages=plan.client_update_stages(None))
    flat = {}
    for prefix, tree in (("params", params), ("observed", observed)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            flat[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return flat


def local_client_rows() -> int:
    """Client rows of a padded round that this process's devices hold (its shard of hospitals)."""
    import jax.numpy as jnp

    from fedpriv.federated.client_mesh import client_mesh, shard_clients
    placed = shard_clients(jnp.ones(NUM_CLIENTS), NUM_CLIENTS, client_mesh())
    return sum(shard.data.shape[0] for shard in placed.addressable_shards)


def main(process_id: int, num_processes: int, port: int, out_dir: Path) -> None:
    started = time.perf_counter()
    joined = initialize_distributed(DistributedConfig(
        enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id))
    import jax
    results = run_federation("sharded")
    np.savez(out_dir / f"process_{process_id}.npz", **results, joined=joined, devices=jax.device_count(),
             process_count=jax.process_count(), local_rows=local_client_rows(),
             seconds=time.perf_counter() - started)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
