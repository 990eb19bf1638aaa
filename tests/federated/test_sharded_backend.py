"""The ``sharded`` client backend and client chunks give ``vmap``'s numbers (DESIGN §3.3, §5).

The default run checks what one device shows (placement, padding, chunks, errors); the
comparison on four forced host devices runs all its cases in one subprocess
(``tests/federated/sharded_cases.py``) under ``-m slow``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.server_stages import ServerPipeline
from fedpriv.federated import (ClientPlacement, FederatedConfig, LocalTrainingConfig, for_each_client,
                               init_server_state, initial_stage_states, make_client_update, make_round,
                               make_server_optimizer)
from fedpriv.federated.client_mesh import pad_clients, take_clients
from fedpriv.models import make_model
from tests.federated.conftest import no_privacy, random_client_data

REPO = Path(__file__).resolve().parents[2]
MODEL = make_model("mlp", input_shape=(3, 3, 1), num_classes=3, hidden_sizes=(8,))


def _clients(count=5, absent=(1,)):
    data = random_client_data(np.random.default_rng(0), clients=count, steps=2, batch=3, input_shape=(3, 3, 1),
                              num_classes=3, absent_clients=absent)
    return data, jax.random.split(jax.random.key(1), count)


def _assert_close(first, second):
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padding_appends_absent_clients_and_taking_drops_them():
    data, keys = _clients(count=5)
    data = jax.tree_util.tree_map(np.asarray, data)  # as the placement pads it: on the host
    padded_data, padded_keys = pad_clients((data, keys), 8)
    assert padded_data.num_clients == 8 and padded_keys.shape == (8,)
    np.testing.assert_array_equal(padded_data.client_mask[5:], 0.0)
    np.testing.assert_array_equal(padded_data.example_mask[5:], 0.0)
    np.testing.assert_array_equal(padded_data.record_ids[5:], -1)
    np.testing.assert_array_equal(padded_data.examples["x"][:5], data.examples["x"])
    back = take_clients((padded_data, padded_keys), 5)
    np.testing.assert_array_equal(jax.random.key_data(back[1]), jax.random.key_data(keys))
    np.testing.assert_array_equal(back[0].examples["x"], data.examples["x"])


def _two_rounds(backend, placement=ClientPlacement()):
    """Two FedAvg rounds of example-weighted MLP clients through ``make_round``; the last outcome
    and the round function."""
    data, keys = _clients()
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 3, 3, 1)))
    plan, optimizer, pipeline = no_privacy(3), make_server_optimizer("sgd", 1.0), ServerPipeline()
    round_function = make_round(make_client_update(MODEL, LocalTrainingConfig(learning_rate=0.1)), optimizer,
                                backend=backend, pipeline=pipeline, weights=plan.aggregation_weights,
                                weighting="examples", placement=placement)
    state, stage_states = init_server_state(params, optimizer), initial_stage_states(pipeline, jax.random.key(2))
    for _ in range(2):
        outcome = round_function(state, data, keys, stage_states, plan.round_noise(0).traced())
        state, stage_states = outcome.state, outcome.stage_states
    return outcome, round_function


def test_sharded_chunked_rounds_on_one_device_equal_vmap_and_do_not_recompile():
    # One device shows the placement, the chunked lax.map and the padding drop; four devices: -m slow.
    reference, _ = _two_rounds("vmap")
    chunked, round_function = _two_rounds("sharded", ClientPlacement(num_devices=1, client_chunk=2))
    _assert_close(reference.state.params, chunked.state.params)
    _assert_close(reference.sent, chunked.sent)
    np.testing.assert_array_equal(reference.reports.num_examples, chunked.reports.num_examples)
    assert np.all(np.asarray(chunked.sent["head"]["kernel"][1]) == 0.0)  # the absent client sends nothing
    assert [f._cache_size() for f in round_function.compiled_functions] == [1]
    assert len(chunked.state.params["head"]["kernel"].sharding.device_set) == 1  # handed back as local arrays


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ClientPlacement(num_devices=0), "placement.num_devices must be an integer >= 1 or None"),
    (lambda: ClientPlacement(client_chunk=2.5), "placement.client_chunk must be an integer >= 1 or None"),
    (lambda: FederatedConfig(algorithm="fedsgd", rounds=1, clients_per_round=None, local_steps=1, batch_size=1,
                             local=LocalTrainingConfig(learning_rate=1.0), backend="vmap",
                             placement=ClientPlacement(num_devices=2)),
     "placement.num_devices .impl.num_devices. applies to the 'sharded' client backend only"),
    (lambda: FederatedConfig(algorithm="fedsgd", rounds=1, clients_per_round=None, local_steps=1, batch_size=1,
                             local=LocalTrainingConfig(learning_rate=1.0), backend="loop",
                             placement=ClientPlacement(client_chunk=4)),
     "placement.client_chunk .impl.client_chunk. applies to the 'vmap' and 'sharded'"),
    (lambda: ClientPlacement(num_devices=jax.device_count() + 1).check_devices(),
     rf"placement.num_devices .impl.num_devices. must be null .all. or in \[1, {jax.device_count()}\]"),
    (lambda: for_each_client(make_client_update(MODEL, LocalTrainingConfig(learning_rate=1.0)), "sharded",
                             ClientPlacement(num_devices=jax.device_count() + 3)),
     "placement.num_devices"),
    (lambda: for_each_client(make_client_update(MODEL, LocalTrainingConfig(learning_rate=1.0)), "pmap"),
     r"client backend must be one of \('vmap', 'loop', 'sharded'\), got 'pmap'"),
])
def test_bad_placement_is_refused_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.slow
def test_sharded_equals_vmap_on_four_host_devices():
    # XLA fixes the device count at start-up: one subprocess with four host devices runs every case.
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, "-m", "tests.federated.sharded_cases"], cwd=REPO, env=environment,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = {line["case"]: line for line in map(json.loads, completed.stdout.splitlines())}
    placement = results.pop("placement")
    # Five clients over four devices: padded to eight, two rows on each of the four devices.
    assert placement == {"case": "placement", "devices": 4, "padded_clients": 8, "rows_per_device": [2],
                         "distinct_devices": 4, "padding_absent": True}
    assert set(results) == {"fedsgd", "fedavg_ragged", "dp_sgd", "dp_fedavg", "dp_fedavg_poisson_sampling",
                            "fixed_size_sampling_private_head", "secure_aggregation_on_the_host",
                            "two_devices_chunked"}
    for name, result in results.items():
        assert result["difference"] <= 1e-5 * max(1.0, result["scale"]), (name, result)
    assert results["two_devices_chunked"]["compilations"] == [1]  # the second round reused the first's program
