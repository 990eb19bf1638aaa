"""Rounds per second and peak host memory of the client backends at 100 and 1,000 clients (DESIGN §5).

    python scripts/bench/federated_rounds_backends.py                    # the full table (long on 2 cores)
    python scripts/bench/federated_rounds_backends.py --clients 100      # one size
    python scripts/bench/federated_rounds_backends.py --variants loop sharded

The default CT model (``conf/model/convnet.yaml``: Inverting Gradients' ConvNet, width 16,
32x32x1 inputs, 4 classes) in FedSGD with batch 1, every client in every round. Each
(variant, clients) cell runs in its own process, so its peak resident memory
(``ru_maxrss``) is its own: model, data, compilation and one round's activations. A cell
compiles and runs one warm-up round, then times ``--rounds`` rounds. ``sharded`` cells run
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (four host devices sharing the
same CPU cores); the others on JAX's one CPU device. Compare cells of one run: machines are
shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORCED_DEVICES = 4
# name -> (backend, client_chunk); the chunk bounds a round's activations to that many clients at a time.
VARIANTS = {"vmap": ("vmap", None), "vmap_chunk_50": ("vmap", 50), "loop": ("loop", None),
            "sharded": ("sharded", None), "sharded_chunk_25": ("sharded", 25)}


def measure(variant: str, num_clients: int, rounds: int) -> dict:
    """One cell, in this process: seconds of the first round (with compilation), rounds/s after it."""
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp

    from fedpriv.defenses.plans import BatchSampling, NoPrivacy
    from fedpriv.defenses.server_stages import ServerPipeline
    from fedpriv.federated import (ClientPlacement, LocalTrainingConfig, init_server_state, initial_stage_states,
                                   make_client_update, make_round, make_server_optimizer)
    from fedpriv.models import make_model
    from fedpriv.typing import ClientData

    backend, chunk = VARIANTS[variant]
    model = make_model("convnet", input_shape=(32, 32, 1), num_classes=4, width=16)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    optimizer, pipeline = make_server_optimizer("adam", 1e-3), ServerPipeline()
    plan = NoPrivacy(batch_sampling=BatchSampling(kind="shuffle", capacity=1))
    round_function = make_round(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)), optimizer,
                                backend=backend, pipeline=pipeline, weights=plan.aggregation_weights,
                                placement=ClientPlacement(client_chunk=chunk))
    shape = (num_clients, 1, 1)
    data = ClientData(examples={"x": jax.random.uniform(jax.random.key(1), (*shape, 32, 32, 1)),
                                "y": jax.random.randint(jax.random.key(2), shape, 0, 4)},
                      example_mask=jnp.ones(shape), client_mask=jnp.ones(num_clients),
                      record_ids=jnp.zeros(shape, jnp.int32))
    keys = jax.random.split(jax.random.key(3), num_clients)
    state, stage_states = init_server_state(params, optimizer), initial_stage_states(pipeline, jax.random.key(4))
    noise = plan.round_noise(0).traced()

    def one_round(state):
        outcome = round_function(state, data, keys, stage_states, noise)
        jax.block_until_ready((outcome.state.params, outcome.sent))
        return outcome.state

    started = time.perf_counter()
    state = one_round(state)
    first_round = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        state = one_round(state)
    return {"variant": variant, "clients": num_clients, "devices": jax.device_count(),
            "first_round_s": first_round, "rounds_per_s": rounds / (time.perf_counter() - started),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_cell(variant: str, num_clients: int, rounds: int, timeout: float) -> dict:
    """``measure`` in a fresh process (its own peak memory; four host devices for ``sharded``)."""
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    environment.pop("XLA_FLAGS", None)
    if VARIANTS[variant][0] == "sharded":
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={FORCED_DEVICES}"
    command = [sys.executable, __file__, "--cell", variant, str(num_clients), "--rounds", str(rounds)]
    try:
        completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "clients": num_clients, "error": f"over {timeout:.0f} s"}
    if completed.returncode != 0:
        return {"variant": variant, "clients": num_clients, "error": completed.stderr.strip().splitlines()[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':<18} {'clients':>7} {'devices':>7} {'first round s':>13} {'rounds/s':>9} {'peak GiB':>8}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:<18} {row['clients']:>7} failed: {row['error']}")
        else:
            lines.append(f"{row['variant']:<18} {row['clients']:>7} {row['devices']:>7} {row['first_round_s']:>13.1f} "
                         f"{row['rounds_per_s']:>9.3f} {row['peak_rss_gib']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up round")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    parser.add_argument("--cell", nargs=2, metavar=("VARIANT", "CLIENTS"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.cell:
        print(json.dumps(measure(arguments.cell[0], int(arguments.cell[1]), arguments.rounds)))
        return
    rows = []
    for num_clients in arguments.clients:
        for variant in arguments.variants:
            rows.append(run_cell(variant, num_clients, arguments.rounds, arguments.timeout))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
