"""``sharded`` against ``vmap`` on several host devices: run as a script, one process for every case.

XLA fixes the host device count when JAX starts, so the test runs this module in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``. It prints one JSON
line per case: the largest absolute difference between the backends' results (final
params and the updates the server observed), and how the ``sharded`` round placed its work.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.federated.sharded_cases
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.defenses.aggregation_protocols import SecureAggregationProtocol
from fedpriv.defenses.plans import DPSGDConfig, RunShape
from fedpriv.defenses.server_stages import ProtocolSum, ServerPipeline
from fedpriv.federated import (ClientPlacement, FederatedConfig, Federation, LocalTrainingConfig, TrainingKeys,
                               init_server_state, initial_stage_states, make_round, make_server_optimizer, train)
from fedpriv.models import make_model
from fedpriv.typing import ClientData
from tests.federated.conftest import dp_fedavg_plan, no_privacy

MODEL = make_model("mlp", input_shape=(3, 3, 1), num_classes=3, hidden_sizes=(8,))


def round_data(num_clients: int, steps: int, batch: int):
    """Random rounds (a fresh draw per round); absent hospitals hold garbage with every mask 0."""
    def build(round_index: int, participating: np.ndarray) -> ClientData:
        rng = np.random.default_rng(round_index)
        x = rng.normal(size=(num_clients, steps, batch, 3, 3, 1)).astype(np.float32)
        y = rng.integers(0, 3, size=(num_clients, steps, batch)).astype(np.int32)
        mask = (rng.random((num_clients, steps, batch)) > 0.3).astype(np.float32)
        mask[:, :, 0] = 1.0
        mask *= participating[:, None, None]
        return ClientData(examples={"x": jnp.asarray(x), "y": jnp.asarray(y)}, example_mask=jnp.asarray(mask),
                          client_mask=jnp.asarray(participating, jnp.float32),
                          record_ids=jnp.zeros(mask.shape, jnp.int32))
    return build


def trained(backend: str, *, num_clients: int, plan, algorithm="fedavg", steps=2, batch=2, pipeline=None,
            client_stages=(), rounds=2, **config_options):
    """Two rounds of ``train`` (round 1 observed) on the given backend."""
    local = (LocalTrainingConfig(learning_rate=1.0) if algorithm == "fedsgd"
             else LocalTrainingConfig(learning_rate=0.1))
    config = FederatedConfig(algorithm=algorithm, rounds=rounds, local_steps=steps, batch_size=batch, local=local,
                             backend=backend, **{"clients_per_round": None, **config_options})
    federation = Federation(model=MODEL, config=config, plan=plan, num_clients=num_clients,
                            client_stages=client_stages, pipeline=pipeline or ServerPipeline())
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 3, 3, 1)))
    result = train(federation, params=params, data=round_data(num_clients, steps, batch), observe_rounds=[rounds - 1],
                   keys=TrainingKeys(sampling=jax.random.key(1), clients=jax.random.key(2), server=jax.random.key(3)))
    return result.params, result.observations[rounds - 1].updates, result.private_heads


def largest_difference(first, second) -> float:
    pairs = zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second), strict=True)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)


def training_case(name: str, **options) -> dict:
    reference = trained("vmap", **options)
    sharded = trained("sharded", **options)
    return {"case": name, "difference": largest_difference(reference, sharded),
            "scale": max(float(np.max(np.abs(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(reference))}


def round_case(name: str, placement: ClientPlacement, num_clients: int) -> dict:
    """One round through ``make_round`` with a placement (device subset, client chunks), twice,
    counting compilations."""
    plan = no_privacy(2)
    optimizer = make_server_optimizer("sgd", 1.0)
    federation = Federation(model=MODEL, plan=plan, num_clients=num_clients, config=FederatedConfig(
        algorithm="fedavg", rounds=1, clients_per_round=None, local_steps=2, batch_size=2,
        local=LocalTrainingConfig(learning_rate=0.1)))
    data = round_data(num_clients, 2, 2)(0, np.arange(num_clients) % 3 != 1)
    keys = jax.random.split(jax.random.key(1), num_clients)
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 3, 3, 1)))
    outcomes = {}
    for backend, chosen in (("vmap", ClientPlacement()), ("sharded", placement)):
        round_function = make_round(federation.client_update(), optimizer, backend=backend, pipeline=ServerPipeline(),
                                    weights=plan.aggregation_weights, weighting="examples", placement=chosen)
        state = init_server_state(params, optimizer)
        stage_states = initial_stage_states(ServerPipeline(), jax.random.key(2))
        for _ in range(2):
            outcome = round_function(state, data, keys, stage_states, plan.round_noise(0).traced())
            state = outcome.state
        outcomes[backend] = (outcome.state.params, outcome.sent, outcome.reports.num_examples)
        compilations = [f._cache_size() for f in round_function.compiled_functions]
    return {"case": name, "difference": largest_difference(outcomes["vmap"], outcomes["sharded"]),
            "scale": 1.0, "compilations": compilations}


def placement_facts() -> dict:
    """Where the sharded round puts a ragged round's clients: every device holds its own rows."""
    from fedpriv.federated.client_mesh import client_mesh, shard_clients
    data = round_data(5, 1, 2)(0, np.ones(5, bool))
    placed = shard_clients(data, 5, client_mesh())
    shards = placed.client_mask.addressable_shards
    return {"case": "placement", "devices": len(jax.devices()), "padded_clients": int(placed.client_mask.shape[0]),
            "rows_per_device": sorted({shard.data.shape[0] for shard in shards}),
            "distinct_devices": len({shard.device for shard in shards}),
            "padding_absent": float(np.asarray(placed.client_mask)[5:].sum()) == 0.0}


def cases() -> dict:
    """Every case by name, built lazily (a plan is calibrated only when its case runs)."""
    dp_sgd = lambda: DPSGDConfig(l2_clip_norm=0.5, noise_multiplier=1.0, target_epsilon=10.0, delta=1e-5).make(
        RunShape(rounds=2, local_steps=2, batch_size=2, hospital_sizes=(8,) * 5))

    def dp_fedavg(name, **sampling):
        plan = dp_fedavg_plan(l2_clip_norm=1.0, noise_multiplier=1.0, num_clients=6, **sampling)
        return training_case(name, num_clients=6, plan=plan, algorithm="fedsgd", steps=1, batch=1,
                             pipeline=ServerPipeline(aggregator=plan.server_noise()),
                             client_stages=plan.client_update_stages(None), **sampling)

    return {
        "placement": placement_facts,
        "fedsgd": lambda: training_case("fedsgd", num_clients=8, plan=no_privacy(1), algorithm="fedsgd", steps=1,
                                        batch=1),
        "fedavg_ragged": lambda: training_case("fedavg_ragged", num_clients=6, plan=no_privacy(2),
                                               weighting="examples"),
        "dp_sgd": lambda: training_case("dp_sgd", num_clients=5, plan=dp_sgd()),
        "dp_fedavg": lambda: dp_fedavg("dp_fedavg"),
        "dp_fedavg_poisson_sampling": lambda: dp_fedavg("dp_fedavg_poisson_sampling", client_sampling_rate=0.5),
        "fixed_size_sampling_private_head": lambda: training_case(
            "fixed_size_sampling_private_head", num_clients=7, plan=no_privacy(2), clients_per_round=3,
            private_head=True),
        "secure_aggregation_on_the_host": lambda: training_case(
            "secure_aggregation_on_the_host", num_clients=5, plan=no_privacy(2), pipeline=ServerPipeline(
                protocol=ProtocolSum(protocol=SecureAggregationProtocol(clip_range=8.0, threshold_fraction=0.5)))),
        "two_devices_chunked": lambda: round_case("two_devices_chunked", ClientPlacement(num_devices=2, client_chunk=2),
                                                  num_clients=5),
    }


def main(names: list[str]) -> None:
    chosen = cases()
    for name in names or chosen:
        print(json.dumps(chosen[name]()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
