import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.defenses.server_stages import ServerPipeline
from fedpriv.federated import (FederatedConfig, Federation, LocalTrainingConfig, TrainingHooks, TrainingKeys,
                               init_server_state, initial_stage_states, make_client_update, make_round,
                               make_server_optimizer)
from fedpriv.typing import ClientData
from tests.federated.conftest import no_privacy, random_client_data, scalar_mean_model

PLAN = no_privacy()
PIPELINE = ServerPipeline()


def _round_function(model, backend, local, weighting="examples"):
    optimizer = make_server_optimizer("sgd", 1.0)
    return make_round(make_client_update(model, local), optimizer, backend=backend, pipeline=PIPELINE,
                      weights=PLAN.aggregation_weights, weighting=weighting), optimizer


def _run_round(model, client_data, backend, *, steps_loop="unroll", rounds=1, learning_rate=0.1):
    local = LocalTrainingConfig(learning_rate=learning_rate, step_loop=steps_loop)
    round_function, optimizer = _round_function(model, backend, local)
    params = model.init(jax.random.key(0), client_data.examples["x"][0, 0])
    state = init_server_state(params, optimizer)
    stage_states = initial_stage_states(PIPELINE, jax.random.key(2))
    keys = jax.random.split(jax.random.key(1), client_data.num_clients)
    for _ in range(rounds):
        outcome = round_function(state, client_data, keys, stage_states, PLAN.round_noise(0).traced())
        state, stage_states = outcome.state, outcome.stage_states
    return state, outcome.sent, outcome.reports, round_function


def test_vmap_backend_equals_loop_backend(tiny_conv_model):
    data = random_client_data(np.random.default_rng(0), clients=3, steps=2, batch=4,
                              input_shape=(8, 8, 1), num_classes=3, absent_clients=(1,))
    vmap_state, vmap_updates, vmap_aux, _ = _run_round(tiny_conv_model, data, "vmap")
    loop_state, loop_updates, loop_aux, _ = _run_round(tiny_conv_model, data, "loop")
    for a, b in zip(jax.tree_util.tree_leaves(vmap_state.params), jax.tree_util.tree_leaves(loop_state.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(vmap_updates), jax.tree_util.tree_leaves(loop_updates)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        assert np.all(np.asarray(a[1]) == 0.0)  # the absent client sends nothing
    np.testing.assert_array_equal(vmap_aux.num_examples, loop_aux.num_examples)


def test_scan_and_unrolled_local_steps_agree(tiny_conv_model):
    data = random_client_data(np.random.default_rng(1), clients=2, steps=3, batch=2,
                              input_shape=(8, 8, 1), num_classes=3)
    unrolled = _run_round(tiny_conv_model, data, "vmap", steps_loop="unroll")[1]
    scanned = _run_round(tiny_conv_model, data, "vmap", steps_loop="scan")[1]
    for a, b in zip(jax.tree_util.tree_leaves(unrolled), jax.tree_util.tree_leaves(scanned)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_fedavg_two_toy_clients_matches_hand_computation(backend):
    # Loss 0.5 (w - x)^2, lr 0.5, two local steps on the same batch, w0 = 0.
    # Client A, batch {1, 3}: w 0 -> 1 -> 1.5, update 1.5, 4 examples processed.
    # Client B, batch {5, pad}: w 0 -> 2.5 -> 3.75, update 3.75, 2 examples processed.
    # Example-weighted mean: (4 * 1.5 + 2 * 3.75) / 6 = 2.25; server SGD lr 1 -> w = 2.25.
    model = scalar_mean_model()
    x = jnp.array([[[1.0, 3.0], [1.0, 3.0]], [[5.0, 99.0], [5.0, -42.0]]])
    mask = jnp.array([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    data = ClientData(examples={"x": x, "y": jnp.zeros((2, 2, 2), jnp.int32)}, example_mask=mask,
                      client_mask=jnp.ones(2), record_ids=jnp.zeros((2, 2, 2), jnp.int32))
    state, updates, aux, _ = _run_round(model, data, backend, learning_rate=0.5)
    np.testing.assert_allclose(updates["w"], [1.5, 3.75], rtol=1e-6)
    np.testing.assert_allclose(aux.num_examples, [4.0, 2.0])
    np.testing.assert_allclose(state.params["w"], 2.25, rtol=1e-6)


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_padding_contributes_exactly_zero(tiny_conv_model, backend):
    rng = np.random.default_rng(2)
    data = random_client_data(rng, clients=3, steps=2, batch=4, input_shape=(8, 8, 1), num_classes=3,
                              absent_clients=(2,))
    # Replace every padded example and the whole absent client with different garbage.
    garbage = rng.normal(size=data.examples["x"].shape).astype(np.float32) * 100
    pad = (np.asarray(data.example_mask) == 0)[..., None, None, None]
    x2 = np.where(pad, garbage, np.asarray(data.examples["x"]))
    y2 = np.where(np.asarray(data.example_mask) == 0, 2 - np.asarray(data.examples["y"]), data.examples["y"])
    data2 = ClientData(examples={"x": jnp.asarray(x2), "y": jnp.asarray(y2)}, example_mask=data.example_mask,
                       client_mask=data.client_mask, record_ids=data.record_ids)
    first = _run_round(tiny_conv_model, data, backend)[0]
    second = _run_round(tiny_conv_model, data2, backend)[0]
    for a, b in zip(jax.tree_util.tree_leaves(first.params), jax.tree_util.tree_leaves(second.params)):
        np.testing.assert_array_equal(a, b)


def test_all_padding_step_leaves_client_unchanged(tiny_conv_model):
    data = random_client_data(np.random.default_rng(3), clients=1, steps=2, batch=2,
                              input_shape=(8, 8, 1), num_classes=3, pad_fraction=0.0)
    one_step = ClientData(examples=jax.tree_util.tree_map(lambda a: a[:, :1], data.examples),
                          example_mask=data.example_mask[:, :1], client_mask=data.client_mask,
                          record_ids=data.record_ids[:, :1])
    padded = ClientData(examples=data.examples, example_mask=data.example_mask.at[:, 1].set(0.0),
                        client_mask=data.client_mask, record_ids=data.record_ids)
    a = _run_round(tiny_conv_model, one_step, "vmap")[1]
    b = _run_round(tiny_conv_model, padded, "vmap")[1]
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_second_round_does_not_recompile(tiny_conv_model, backend):
    data = random_client_data(np.random.default_rng(4), clients=2, steps=2, batch=2,
                              input_shape=(8, 8, 1), num_classes=3)
    _, _, _, round_function = _run_round(tiny_conv_model, data, backend, rounds=1)
    sizes_after_first = [f._cache_size() for f in round_function.compiled_functions]
    assert all(size == 1 for size in sizes_after_first)
    optimizer = make_server_optimizer("sgd", 1.0)
    state = init_server_state(tiny_conv_model.init(jax.random.key(5), data.examples["x"][0, 0]), optimizer)
    keys = jax.random.split(jax.random.key(6), 2)
    stage_states = initial_stage_states(PIPELINE, jax.random.key(2))
    for _ in range(2):
        state = round_function(state, data, keys, stage_states, PLAN.round_noise(0).traced()).state
    assert [f._cache_size() for f in round_function.compiled_functions] == sizes_after_first


def test_fedsgd_update_is_minus_the_batch_gradient(tiny_conv_model):
    data = random_client_data(np.random.default_rng(5), clients=2, steps=1, batch=3,
                              input_shape=(8, 8, 1), num_classes=3)
    local = LocalTrainingConfig(learning_rate=1.0)
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])
    update, _ = make_client_update(tiny_conv_model, local)(
        params, jax.tree_util.tree_map(lambda a: a[0], data.examples), data.example_mask[0], jax.random.key(0))
    batch = {"x": data.examples["x"][0, 0], "y": data.examples["y"][0, 0]}
    mask = data.example_mask[0, 0]

    def loss(p):
        losses = tiny_conv_model.per_example_loss(p, batch)
        return jnp.sum(losses * mask) / jnp.sum(mask)

    gradient = jax.grad(loss)(params)
    for u, g in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(gradient)):
        np.testing.assert_allclose(u, -g, rtol=1e-5, atol=1e-7)


def test_config_rejects_bad_values():
    local = LocalTrainingConfig(learning_rate=1.0)
    with pytest.raises(ValueError, match="local_steps"):
        FederatedConfig(algorithm="fedsgd", rounds=1, clients_per_round=None, local_steps=2,
                        batch_size=1, local=local)
    with pytest.raises(ValueError, match="algorithm"):
        FederatedConfig(algorithm="fedprox", rounds=1, clients_per_round=None, local_steps=1,
                        batch_size=1, local=local)
    with pytest.raises(ValueError, match="learning_rate"):
        LocalTrainingConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="backend"):
        FederatedConfig(algorithm="fedavg", rounds=1, clients_per_round=None, local_steps=1,
                        batch_size=1, local=local, backend="threads")


def test_training_stops_before_the_round_a_budget_refuses(tiny_conv_model):
    from fedpriv.federated import train
    data = random_client_data(np.random.default_rng(6), clients=2, steps=1, batch=2,
                              input_shape=(8, 8, 1), num_classes=3)
    config = FederatedConfig(algorithm="fedavg", rounds=5, clients_per_round=None, local_steps=1, batch_size=2,
                             local=LocalTrainingConfig(learning_rate=0.1))
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])

    class Budget:
        def stop_reason(self, round_index):
            return "budget exhausted" if round_index >= 3 else ""

    result = train(Federation(model=tiny_conv_model, config=config, plan=PLAN, num_clients=2), params=params,
                   data=lambda r, p: data, hooks=TrainingHooks(budget=Budget()),
                   keys=TrainingKeys(sampling=jax.random.key(1), clients=jax.random.key(2), server=jax.random.key(3)))
    assert result.rounds_run == 3 and len(result.seconds_per_round) == 3
    assert result.stop_reason == "budget exhausted"
