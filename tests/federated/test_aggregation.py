"""The round's aggregation stages: DP-FedAvg, secure protocols, screening, partitioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.dp_fedavg import DPFedAvgPlan
from fedpriv.federated import (FederatedConfig, LocalTrainingConfig, init_server_state, make_client_update,
                               make_round, make_server_optimizer, sample_clients, train)
from fedpriv.federated.server import Aggregation
from fedpriv.typing import ClientData
from tests.federated.conftest import random_client_data, scalar_mean_model


class SumInNumpy:
    """A stand-in secure protocol: the server learns only the float64 sum."""
    name = "numpy_sum"

    def __init__(self):
        self.calls = []

    def aggregate(self, vectors, key):
        self.calls.append(vectors.shape)
        return vectors.astype(np.float64).sum(axis=0), {"bytes_per_client": 4 * vectors.shape[1]}


def _two_clients():
    # Client A's examples {1, 3}, client B's {5}: one FedSGD step of 0.5 (w - x)^2 from w = 0.
    x = jnp.array([[[1.0, 3.0]], [[5.0, 0.0]]])
    mask = jnp.array([[[1.0, 1.0]], [[1.0, 0.0]]])
    return ClientData(examples={"x": x, "y": jnp.zeros((2, 1, 2), jnp.int32)}, example_mask=mask,
                      client_mask=jnp.ones(2), record_ids=jnp.zeros((2, 1, 2), jnp.int32))


def _one_round(aggregation, backend="vmap", server_key=jax.random.key(5)):
    model = scalar_mean_model()
    optimizer = make_server_optimizer("sgd", 1.0)
    round_function = make_round(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)), optimizer,
                                backend=backend, aggregation=aggregation)
    state = init_server_state({"w": jnp.float32(0.0)}, optimizer)
    return round_function(state, _two_clients(), jax.random.split(jax.random.key(1), 2), None, server_key)


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_dp_fedavg_round_clips_each_client_and_divides_the_sum_by_the_expected_cohort(backend):
    # Updates: A = mean(1, 3) = 2, B = 5; clipped to 1.5 each; sum 3.0 / expected 4 -> w = 0.75.
    plan = DPFedAvgPlan(l2_clip_norm=1.5, noise_multiplier=0.0, client_sampling_rate=1.0, rounds=1,
                        expected_clients_per_round=4.0)
    state, observed, aux = _one_round(Aggregation(dp_fedavg=plan), backend)
    assert float(state.params["w"]) == pytest.approx(0.75)
    np.testing.assert_allclose(observed["w"], [1.5, 1.5])  # the server reads the clipped messages


def test_dp_fedavg_needs_a_server_key():
    plan = DPFedAvgPlan(l2_clip_norm=1.0, noise_multiplier=1.0, client_sampling_rate=1.0, rounds=1,
                        expected_clients_per_round=2.0)
    with pytest.raises(ValueError, match="server_key"):
        _one_round(Aggregation(dp_fedavg=plan), server_key=None)


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_a_secure_protocol_gives_the_same_model_and_shows_only_the_weighted_mean(backend):
    plain_state, plain_observed, _ = _one_round(Aggregation(), backend)
    protocol = SumInNumpy()
    secure_state, secure_observed, aux = _one_round(Aggregation(protocol=protocol), backend)
    # Example-weighted mean of updates 2 (2 examples) and 5 (1 example) = 3.
    assert float(plain_state.params["w"]) == pytest.approx(3.0)
    assert float(secure_state.params["w"]) == pytest.approx(3.0, rel=1e-6)
    assert np.asarray(plain_observed["w"]).shape == (2,)
    np.testing.assert_allclose(secure_observed["w"], [3.0], rtol=1e-6)
    assert protocol.calls == [(2, 2)]  # two senders; one coordinate plus the weight
    assert aux["protocol"]["bytes_per_client"] == 8


def test_nonfinite_updates_are_dropped_and_counted():
    data = _two_clients()
    data = ClientData(examples={"x": data.examples["x"].at[1, 0, 0].set(jnp.inf), "y": data.examples["y"]},
                      example_mask=data.example_mask, client_mask=data.client_mask, record_ids=data.record_ids)
    model = scalar_mean_model()
    optimizer = make_server_optimizer("sgd", 1.0)
    round_function = make_round(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)), optimizer,
                                backend="vmap")
    state, _, aux = round_function(init_server_state({"w": jnp.float32(0.0)}, optimizer), data,
                                   jax.random.split(jax.random.key(1), 2))
    assert float(state.params["w"]) == pytest.approx(2.0)  # only client A counts
    assert int(aux["num_dropped_nonfinite"]) == 1


def test_absurdly_large_updates_are_dropped_and_counted():
    # Client B's update is 5 and its weight 1; with a bound of 4 only client A (update 2) counts.
    state, _, aux = _one_round(Aggregation(max_update_norm=4.0))
    assert float(state.params["w"]) == pytest.approx(2.0)
    assert int(aux["num_dropped_oversized"]) == 1 and int(aux["num_dropped_nonfinite"]) == 0
    with pytest.raises(ValueError, match="max_update_norm"):
        Aggregation(max_update_norm=0.0)


def test_screening_excludes_flagged_clients_and_reports_them():
    def screen_out_large(messages, client_mask, key):
        keep = jnp.abs(messages["w"]) < 4.0
        return keep.astype(jnp.float32), {"flagged": jnp.logical_not(keep)}
    state, _, aux = _one_round(Aggregation(screen=screen_out_large))
    assert float(state.params["w"]) == pytest.approx(2.0)
    assert int(aux["num_screened_out"]) == 1
    np.testing.assert_array_equal(aux["screen"]["flagged"], [False, True])


def test_per_client_screening_cannot_be_combined_with_a_secure_protocol():
    with pytest.raises(ValueError, match="screen"):
        Aggregation(protocol=SumInNumpy(), screen=lambda m, c, k: (c, {}))


def test_poisson_client_sampling_has_the_configured_rate():
    masks = np.stack([sample_clients(jax.random.key(i), 50, None, 0.2) for i in range(200)])
    assert masks.mean() == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError, match="client_sampling_rate"):
        FederatedConfig(algorithm="fedsgd", rounds=1, clients_per_round=2, client_sampling_rate=0.5, local_steps=1,
                        batch_size=1, local=LocalTrainingConfig(learning_rate=1.0))


def _partitioned_training(tiny_conv_model, backend):
    data = random_client_data(np.random.default_rng(0), clients=3, steps=2, batch=4, input_shape=(8, 8, 1),
                              num_classes=3, absent_clients=(2,))
    config = FederatedConfig(algorithm="fedavg", rounds=2, clients_per_round=None, local_steps=2, batch_size=4,
                             local=LocalTrainingConfig(learning_rate=0.1), backend=backend, private_head=True)
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])
    result = train(model=tiny_conv_model, config=config, params=params, round_data=lambda r, p: data,
                   sampling_key=jax.random.key(1), clients_key=jax.random.key(2), num_clients=3,
                   observe_rounds=(1,))
    return params, result


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_partitioned_model_keeps_heads_private_and_federates_the_extractor(tiny_conv_model, backend):
    params, result = _partitioned_training(tiny_conv_model, backend)
    heads = result.private_heads["head"]["kernel"]
    assert not np.allclose(heads[0], heads[1])  # each participant trained its own head
    np.testing.assert_array_equal(heads[2], params["head"]["kernel"])  # the absent one did not
    np.testing.assert_array_equal(result.params["head"]["kernel"], params["head"]["kernel"])  # server never saw it
    assert not np.allclose(result.params["Conv_0"]["kernel"], params["Conv_0"]["kernel"])
    observation = result.observations[1]
    assert observation.metadata.private_layers == ("head",)
    assert np.all(np.asarray(observation.updates["head"]["kernel"]) == 0.0)
    hospital = result.hospital_params(tiny_conv_model, 0)
    np.testing.assert_array_equal(hospital["head"]["kernel"], heads[0])


def test_partitioned_training_agrees_across_backends(tiny_conv_model):
    _, vmapped = _partitioned_training(tiny_conv_model, "vmap")
    _, looped = _partitioned_training(tiny_conv_model, "loop")
    for a, b in zip(jax.tree_util.tree_leaves((vmapped.params, vmapped.private_heads)),
                    jax.tree_util.tree_leaves((looped.params, looped.private_heads))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_server_screen_fits_its_vae_after_the_warm_up_rounds():
    from fedpriv.defenses.anomaly import AnomalyConfig
    from fedpriv.federated.defense_stack import _server_screen

    screen = _server_screen(AnomalyConfig(projection_dim=16, vae_warmup_rounds=3))
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64).astype(np.float32)
    for round_index in range(5):
        messages = {"w": jnp.asarray(direction + 0.1 * rng.normal(size=(6, 64)).astype(np.float32))}
        keep, report = screen(messages, np.ones(6, bool), jax.random.key(round_index))
        assert report["vae"] == (round_index >= 2)  # fitted on the accepted updates of rounds 0-2
    crafted = {"w": jnp.asarray(np.concatenate([direction[None] + 0.1 * rng.normal(size=(5, 64)),
                                                -30 * direction[None]]).astype(np.float32))}
    keep, report = screen(crafted, np.ones(6, bool), jax.random.key(9))
    assert not keep[5] and report["rejected"] >= 1
