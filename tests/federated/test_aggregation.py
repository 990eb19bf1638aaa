"""The round's server stages: DP-FedAvg, secure protocols, screening, partitioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.anomaly import AnomalyConfig
from fedpriv.defenses.plans import RoundNoise
from fedpriv.defenses.server_stages import (AnomalyScreening, DropInvalidUpdates, PlaintextSum, ProtocolSum,
                                            RobustRule, RoundAggregate, ServerPipeline, StageContext)
from fedpriv.defenses.robust_aggregation import RobustAggregationConfig
from fedpriv.federated import (FederatedConfig, Federation, LocalTrainingConfig, TrainingKeys, init_server_state,
                               initial_stage_states, make_client_update, make_round, make_server_optimizer,
                               sample_clients, train)
from fedpriv.typing import ClientData
from tests.federated.conftest import dp_fedavg_plan, no_privacy, random_client_data, scalar_mean_model


class SumInNumpy:
    """A stand-in secure protocol: the server learns only the float64 sum."""
    name = "numpy_sum"

    def __init__(self):
        self.calls = []

    def aggregate(self, vectors, key):
        self.calls.append(vectors.shape)
        return vectors.astype(np.float64).sum(axis=0), {"bytes_per_client": 4 * vectors.shape[1]}


def _two_clients(x=((1.0, 3.0), (5.0, 0.0))):
    # Client A's examples {1, 3}, client B's {5}: one FedSGD step of 0.5 (w - x)^2 from w = 0.
    x = jnp.array(x)[:, None, :]
    mask = jnp.array([[[1.0, 1.0]], [[1.0, 0.0]]])
    return ClientData(examples={"x": x, "y": jnp.zeros((2, 1, 2), jnp.int32)}, example_mask=mask,
                      client_mask=jnp.ones(2), record_ids=jnp.zeros((2, 1, 2), jnp.int32))


def _one_round(pipeline=ServerPipeline(), plan=None, backend="vmap", weighting="uniform", data=None,
               client_stages=()):
    plan = no_privacy(2) if plan is None else plan
    model = scalar_mean_model()
    optimizer = make_server_optimizer("sgd", 1.0)
    federation = Federation(model=model, config=FederatedConfig(
        algorithm="fedsgd", rounds=1, clients_per_round=None, local_steps=1, batch_size=2,
        local=LocalTrainingConfig(learning_rate=1.0), backend=backend), plan=plan, num_clients=2,
        client_stages=client_stages, pipeline=pipeline)
    round_function = make_round(federation.client_update(), optimizer, backend=backend, pipeline=pipeline,
                                weights=plan.aggregation_weights, weighting=weighting)
    state = init_server_state({"w": jnp.float32(0.0)}, optimizer)
    states = initial_stage_states(pipeline, jax.random.key(5))
    return round_function(state, _two_clients() if data is None else data, jax.random.split(jax.random.key(1), 2),
                          states, plan.round_noise(0).traced())


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_dp_fedavg_round_clips_each_client_and_divides_the_sum_by_the_expected_cohort(backend):
    # Updates: A = mean(1, 3) = 2, B = 5; clipped to 1.5 each; sum 3.0 / expected 2 -> w = 1.5.
    plan = dp_fedavg_plan(l2_clip_norm=1.5, noise_multiplier=0.0, num_clients=2)
    outcome = _one_round(ServerPipeline(aggregator=plan.server_noise()), plan,
                         backend=backend, client_stages=plan.client_update_stages(None))
    assert float(outcome.state.params["w"]) == pytest.approx(1.5)
    np.testing.assert_allclose(outcome.observed["w"], [1.5, 1.5])  # the server reads the clipped messages


def test_dp_fedavg_noise_is_drawn_from_the_stage_state_and_differs_every_round():
    plan = dp_fedavg_plan(l2_clip_norm=1.0, noise_multiplier=1.0, num_clients=2)
    stage = plan.server_noise()
    aggregate = RoundAggregate(messages=None, weights=jnp.ones(2), weighted_sum={"w": jnp.zeros(64)},
                               total_weight=jnp.float32(2.0))
    context = StageContext(server_noise_multiplier=jnp.float32(1.0))
    first, state, _ = stage.update(aggregate, stage.init(jax.random.key(0)), context)
    second, _, _ = stage.update(aggregate, state, context)
    # (sum + N(0, sigma^2 C^2)) / 2 per coordinate: std 0.5, and fresh noise each round.
    assert np.std(np.asarray(first.mean_update["w"])) == pytest.approx(0.5, rel=0.3)
    assert not np.allclose(first.mean_update["w"], second.mean_update["w"])


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_a_secure_protocol_gives_the_same_model_and_shows_only_the_weighted_mean(backend):
    plain = _one_round(backend=backend, weighting="examples")
    protocol = SumInNumpy()
    secure = _one_round(ServerPipeline(protocol=ProtocolSum(protocol=protocol)), backend=backend,
                        weighting="examples")
    # Example-weighted mean of updates 2 (2 examples) and 5 (1 example) = 3.
    assert float(plain.state.params["w"]) == pytest.approx(3.0)
    assert float(secure.state.params["w"]) == pytest.approx(3.0, rel=1e-6)
    assert np.asarray(plain.observed["w"]).shape == (2,)
    np.testing.assert_allclose(secure.observed["w"], [3.0], rtol=1e-6)
    assert protocol.calls == [(2, 2)]  # two senders; one coordinate plus the weight
    assert secure.stats["protocol"]["bytes_per_client"] == 8


def test_a_protocol_round_with_fewer_than_two_senders_is_aborted_and_changes_nothing():
    data = _two_clients()
    data = ClientData(examples=data.examples, example_mask=data.example_mask, client_mask=jnp.array([1.0, 0.0]),
                      record_ids=data.record_ids)
    outcome = _one_round(ServerPipeline(protocol=ProtocolSum(protocol=SumInNumpy())), data=data, backend="loop")
    assert outcome.aborted and float(outcome.state.params["w"]) == 0.0
    assert "1 sender" in outcome.stats["protocol_abort_reason"]


def test_nonfinite_updates_are_dropped_and_counted():
    outcome = _one_round(data=_two_clients(((1.0, 3.0), (np.inf, 0.0))))
    assert float(outcome.state.params["w"]) == pytest.approx(2.0)  # only client A counts
    assert int(outcome.stats["num_dropped_nonfinite"]) == 1


def test_absurdly_large_updates_are_dropped_and_counted():
    # Client B's update is 5; with a bound of 4 only client A (update 2) counts.
    outcome = _one_round(ServerPipeline(max_update_norm=4.0))
    assert float(outcome.state.params["w"]) == pytest.approx(2.0)
    assert int(outcome.stats["num_dropped_oversized"]) == 1 and int(outcome.stats["num_dropped_nonfinite"]) == 0
    with pytest.raises(ValueError, match="max_update_norm"):
        DropInvalidUpdates(max_update_norm=0.0)


def test_robust_rule_replaces_the_mean():
    outcome = _one_round(ServerPipeline(aggregator=RobustRule(config=RobustAggregationConfig(rule="median"))))
    assert float(outcome.state.params["w"]) == pytest.approx(3.5)  # the median of 2 and 5


def test_per_client_stages_cannot_follow_a_secure_protocol():
    with pytest.raises(ValueError, match="screening"):
        ServerPipeline(screens=(AnomalyScreening(config=AnomalyConfig()),), protocol=ProtocolSum(protocol=SumInNumpy()))
    with pytest.raises(ValueError, match="robust_aggregation"):
        ServerPipeline(protocol=ProtocolSum(protocol=SumInNumpy()),
                       aggregator=RobustRule(config=RobustAggregationConfig(rule="median")))


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
    federation = Federation(model=tiny_conv_model, config=config, plan=no_privacy(4), num_clients=3)
    result = train(federation, params=params, data=lambda r, p: data, observe_rounds=(1,),
                   keys=TrainingKeys(sampling=jax.random.key(1), clients=jax.random.key(2), server=jax.random.key(3)))
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


@pytest.mark.slow  # 19 s; the screen is unit-tested in tests/defenses/test_anomaly.py
def test_server_screen_fits_its_vae_after_the_warm_up_rounds():
    screen = AnomalyScreening(config=AnomalyConfig(projection_dim=16, vae_warmup_rounds=3))
    state = screen.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64).astype(np.float32)
    context = StageContext()
    for round_index in range(5):
        messages = {"w": jnp.asarray(direction + 0.1 * rng.normal(size=(6, 64)).astype(np.float32))}
        _, state, report = screen.update(RoundAggregate(messages=messages, weights=jnp.ones(6)), state, context)
        assert report["screen_vae"] == (round_index >= 2)  # fitted on the accepted updates of rounds 0-2
    crafted = {"w": jnp.asarray(np.concatenate([direction[None] + 0.1 * rng.normal(size=(5, 64)),
                                                -30 * direction[None]]).astype(np.float32))}
    aggregate, _, report = screen.update(RoundAggregate(messages=crafted, weights=jnp.ones(6)), state, context)
    assert float(aggregate.weights[5]) == 0.0 and report["screen_rejected"] >= 1
