"""ICD code recovery from embedding-bag updates, checked against the true records.

Measured here (2 shared CPU cores): exact sets (F1 = 1.0) for FedSGD and FedAvg; exact
single-record counts; frozen-embedding decomposition F1 = 1.0 on whole records with a
128-wide table; under real DP-SGD noise (clip 1) the chi-square test's F1 falls with the
noise multiplier (numbers in ``test_noisy_sets_degrade_with_the_noise_multiplier``).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks import codes
from fedpriv.data.client_data import build_round_data
from fedpriv.data.ehr import EHRCohortConfig, make_ehr_cohort
from fedpriv.data.partition import partition_iid
from fedpriv.defenses import DPSGDPlan
from fedpriv.federated import LocalTrainingConfig, for_each_client, make_client_update
from fedpriv.defenses.noise import update_noise_stddev
from fedpriv.federated.training import FederatedConfig
from tests.federated.conftest import train_without_defenses
from fedpriv.metrics.codes import (code_set_scores, count_accuracy, hierarchical_match, subtype_accuracy,
                                   token_counts)
from fedpriv.models.embedding_bag import embedding_bag
from fedpriv.typing import ClientData, Observation, ProtocolMetadata
from tests.attacks.helpers import observe

MAX_CODES = 40


@pytest.fixture(scope="module")
def cohort():
    return make_ehr_cohort(EHRCohortConfig(num_records=64, max_codes=MAX_CODES), np.random.default_rng(0))


@pytest.fixture(scope="module")
def small_model(cohort):
    """The 32-wide sum-pooling model most tests share (one compilation of its init)."""
    return _model(cohort)


def _model(cohort, embedding_dim=32, pooling="sum", hidden_sizes=(32,)):
    model = embedding_bag(cohort.input_shape, 8, vocabulary_size=cohort.vocabulary.size,
                          embedding_dim=embedding_dim, hidden_sizes=hidden_sizes, pooling=pooling)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, MAX_CODES), jnp.int32))


def _truth(cohort, records):
    """True counts per victim from ``records [V, n]`` (records pooled per victim)."""
    return token_counts(cohort.codes[np.asarray(records)].reshape(len(records), -1), cohort.vocabulary.size)


def test_code_set_is_exact_for_fedsgd_and_fedavg(cohort, small_model):
    model, params = small_model
    records = np.arange(32).reshape(4, 2, 4)  # 4 clients, 2 steps of batch 4
    truth = _truth(cohort, records.reshape(4, -1)) > 0
    fedavg = observe(model, params, cohort.codes[records], cohort.labels[records], learning_rate=0.1,
                     algorithm="fedavg")
    assert code_set_scores(codes.code_set(fedavg, model, range(4)).present, truth) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0}
    first_step = records[:, :1]
    fedsgd = observe(model, params, cohort.codes[first_step], cohort.labels[first_step])
    recovery = codes.code_set(fedsgd, model, [2, 0])
    scores = code_set_scores(recovery.present, _truth(cohort, first_step[[2, 0]].reshape(2, -1)) > 0)
    assert scores["f1"] == 1.0 and recovery.victims == (2, 0) and not recovery.present[:, 0].any()


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_single_record_counts_are_exact(cohort, small_model, pooling):
    model, params = small_model if pooling == "sum" else _model(cohort, pooling=pooling)
    records = np.arange(8).reshape(8, 1, 1)
    observation = observe(model, params, cohort.codes[records], cohort.labels[records])
    recovery = codes.code_counts(observation, model, range(8), pooling=pooling)
    truth = _truth(cohort, records.reshape(8, 1))
    assert truth.max() >= 3  # the records do repeat codes
    assert count_accuracy(recovery.counts, truth) == {"token_accuracy": 1.0, "exact_records": 1.0}
    assert subtype_accuracy(recovery.counts, cohort.labels[:8]) == 1.0
    if pooling == "sum":
        # FedAvg: three SGD steps on the same record keep the rows parallel; the scale is
        # unknown, so counts come from the integer search (the age token occurs once).
        repeated = np.repeat(records, 3, axis=1)
        fedavg = observe(model, params, cohort.codes[repeated], cohort.labels[repeated], learning_rate=0.1,
                         algorithm="fedavg")
        recovered = codes.code_counts(fedavg, model, range(8), pooling=pooling)
        assert count_accuracy(recovered.counts, truth) == {"token_accuracy": 1.0, "exact_records": 1.0}
        # One step with learning rate 0.1: the rate cancels in the projection.
        one_step = observe(model, params, cohort.codes[records], cohort.labels[records], learning_rate=0.1,
                           algorithm="fedavg")
        recovered = codes.code_counts(one_step, model, range(8), pooling=pooling)
        np.testing.assert_allclose(recovered.scores[recovered.present], truth[truth > 0], rtol=1e-3)


def test_frozen_embeddings_decompose_the_pooled_vector(cohort):
    """Exact on small bags and on whole records (12-18 distinct tokens in 128 dimensions,
    2,530 atoms). Plain greedy pursuit (one restart) sometimes starts on a wrong atom: on
    64 whole records F1 0.990 with 1 restart, 1.0 with 8 (the default); with a 64-wide
    table F1 falls to 0.52 (1 restart) and 0.60 (8): too few dimensions for ~15 atoms."""
    model, params = _model(cohort, embedding_dim=128, hidden_sizes=(64,))
    records = np.arange(8, 16).reshape(8, 1, 1)
    small = cohort.codes[records].copy()
    small[..., 10:] = 0
    bags = np.concatenate([small, cohort.codes[records]])  # clients 0-7 small, 8-15 whole records
    observation = observe(model, params, bags, np.concatenate([cohort.labels[records]] * 2))
    # The table is frozen: the server sees no update for it.
    updates = {**observation.updates,
               "embedding": {"embedding": jnp.zeros_like(observation.updates["embedding"]["embedding"])}}
    recovery = codes.frozen_embedding_codes(dataclasses.replace(observation, updates=updates), model, range(16))
    truth = token_counts(bags.reshape(16, -1), cohort.vocabulary.size)
    assert count_accuracy(recovery.counts[:8], truth[:8]) == {"token_accuracy": 1.0, "exact_records": 1.0}
    assert code_set_scores(recovery.present[:8], truth[:8] > 0)["f1"] == 1.0
    assert code_set_scores(recovery.present[8:], truth[8:] > 0)["f1"] == 1.0
    assert count_accuracy(recovery.counts[8:], truth[8:])["exact_records"] == 1.0


def test_nonnegative_omp_recovers_a_sparse_combination():
    atoms = jax.random.normal(jax.random.key(0), (500, 64))
    coefficients = np.zeros(500, np.float32)
    coefficients[[3, 77, 401]] = [1.0, 2.0, 3.0]
    found = codes.nonnegative_omp(jnp.asarray(coefficients) @ atoms, atoms, 8)
    np.testing.assert_allclose(found, coefficients, atol=1e-4)


def _noise_observation(model, params, num_clients, stddev, generator):
    """Updates of pure Gaussian noise in the table, zero elsewhere: every token is absent."""
    updates = jax.tree_util.tree_map(lambda leaf: np.zeros((num_clients, *leaf.shape), np.float32), params)
    table = params["embedding"]["embedding"]
    updates["embedding"]["embedding"] = (stddev * generator.standard_normal((num_clients, *table.shape))).astype(np.float32)
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=1, learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=tuple(range(num_clients)))
    return Observation(params=params, updates=updates, aggregated=False, round_index=0, metadata=metadata)


def test_chi_square_test_has_its_false_positive_rate(cohort, small_model):
    model, params = small_model
    observation = _noise_observation(model, params, 16, 0.3, np.random.default_rng(5))
    recovery = codes.noisy_code_set(observation, model, range(16), noise_stddev=0.3, false_positive_rate=0.01)
    trials = 16 * (cohort.vocabulary.size - 1)
    # Binomial(trials, 0.01): mean 404.6, stddev 19.9; allow 4 stddevs.
    assert abs(int(recovery.present.sum()) - 0.01 * trials) < 4 * math.sqrt(trials * 0.01 * 0.99)
    threshold = codes.chi_square_threshold(0.3, 32, 0.01)
    norms = np.linalg.norm(np.asarray(observation.updates["embedding"]["embedding"]), axis=-1)
    norms[:, 0] = 0.0
    assert np.array_equal(recovery.present, norms > threshold)
    # With the wrong (too small) stddev the rate is far off: the test can fail.
    wrong = codes.noisy_code_set(observation, model, range(16), noise_stddev=0.2, false_positive_rate=0.01)
    assert wrong.present.mean() > 0.5


def _dp_observations(model, params, x, y, noise_multipliers, key):
    """FedSGD observations under the library's DP-SGD (clip 1, expected batch = batch), one per
    noise multiplier; the multiplier is traced, so the round compiles once."""
    clients, steps, batch = y.shape
    plan = DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=1.0, sampling_rate=1.0, steps=1,
                     expected_batch_size=float(batch))
    run = jax.jit(for_each_client(make_client_update(model, LocalTrainingConfig(learning_rate=1.0), plan), "vmap"))
    data = ClientData(examples={"x": jnp.asarray(x), "y": jnp.asarray(y)},
                      example_mask=jnp.ones((clients, steps, batch)), client_mask=jnp.ones(clients),
                      record_ids=jnp.zeros((clients, steps, batch), jnp.int32))
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=batch, learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=tuple(range(clients)))
    for sigma in noise_multipliers:
        updates, _ = run(params, data, jax.random.split(key, clients), jnp.float32(sigma))
        observation = Observation(params=params, updates=updates, aggregated=False, round_index=0,
                                  metadata=metadata)
        yield sigma, observation, update_noise_stddev(sigma * plan.l2_clip_norm, plan.expected_batch_size)


@pytest.mark.slow  # about 20 s on 2 busy cores: per-example gradients compile once, four noise levels
def test_noisy_sets_degrade_with_the_noise_multiplier(cohort, small_model):
    """Single records under DP-SGD (clip 1, 32-wide table), false-positive rate 1e-4.

    Measured F1: 0.998 at sigma 0.001, 0.883 at 0.01, 0.354 at 0.03, 0.0 at 0.3; the
    ontology refinement lifts sigma 0.03 to 0.562.
    """
    model, params = small_model
    records = np.arange(16).reshape(16, 1, 1)
    truth = _truth(cohort, records.reshape(16, 1)) > 0
    f1 = {}
    for sigma, observation, stddev in _dp_observations(model, params, cohort.codes[records], cohort.labels[records],
                                                       (0.001, 0.01, 0.03, 0.3), jax.random.key(7)):
        recovery = codes.noisy_code_set(observation, model, range(16), noise_stddev=stddev,
                                        false_positive_rate=1e-4)
        f1[sigma] = code_set_scores(recovery.present, truth)["f1"]
        if sigma == 0.03:
            refined = codes.refine_with_ontology(recovery, accept_score=-math.log(1e-4),
                                                 candidate_score=-math.log(0.05))
            f1["refined"] = code_set_scores(refined.present, truth)["f1"]
    assert f1[0.001] > 0.95 and f1[0.01] > 0.85
    assert f1[0.001] >= f1[0.01] > f1[0.03] > f1[0.3] and f1[0.3] < 0.1
    assert f1["refined"] > f1[0.03] + 0.05


def test_bad_requests_are_refused(cohort, small_model):
    model, params = small_model
    records = np.arange(8).reshape(2, 1, 4)
    observation = observe(model, params, cohort.codes[records], cohort.labels[records])
    with pytest.raises(ValueError, match="batch_size"):
        codes.code_counts(observation, model, [0])
    with pytest.raises(ValueError, match="batch_size"):
        codes.frozen_embedding_codes(observation, model, [0])
    with pytest.raises(ValueError, match="victims"):
        codes.code_set(observation, model, [5])
    with pytest.raises(ValueError, match="noise_stddev"):
        codes.noisy_code_set(observation, model, [0], noise_stddev=0.0)
    adam = dataclasses.replace(observation, metadata=dataclasses.replace(
        observation.metadata, batch_size=1, local_optimizer="adam"))
    with pytest.raises(ValueError, match="local_optimizer"):
        codes.code_counts(adam, model, [0])
    with pytest.raises(ValueError, match="pooling"):
        codes.code_counts(observation, model, [0], pooling="max")
    with pytest.raises(ValueError, match="local_steps"):
        update_noise_stddev(1.0, 4.0, local_steps=0)


def test_end_to_end_one_round_of_fedsgd(cohort, small_model):
    """Cohort -> partition -> round data -> one FedSGD round -> Observation -> attack -> metrics."""
    generator = np.random.default_rng(3)
    model, params = small_model
    for batch_size in (8, 1):
        num_clients = 64 // batch_size if batch_size == 8 else 8
        partition = partition_iid(64 if batch_size == 8 else 8, num_clients, generator)
        config = FederatedConfig(algorithm="fedsgd", rounds=1, clients_per_round=None, local_steps=1,
                                 batch_size=batch_size, local=LocalTrainingConfig(learning_rate=1.0))
        round_data = lambda r, participating: build_round_data(
            cohort.codes, cohort.labels, partition, local_steps=1, batch_size=batch_size, sampling="full",
            participating=participating, generator=generator)
        result = train_without_defenses(model, config, params, round_data, num_clients, observe_rounds=(0,))
        observation, data = result.observations[0], result.observed_data[0]
        record_ids = np.asarray(data.record_ids).reshape(num_clients, -1)
        assert (record_ids >= 0).all()
        truth = _truth(cohort, record_ids)
        recovery = codes.code_set(observation, model, range(num_clients))
        assert code_set_scores(recovery.present, truth > 0)["f1"] == 1.0
        assert hierarchical_match(recovery.present, truth > 0)["score"] == 1.0
        if batch_size == 1:
            counts = codes.code_counts(observation, model, range(num_clients))
            assert count_accuracy(counts.counts, truth)["exact_records"] == 1.0
            assert subtype_accuracy(counts.counts, cohort.labels[record_ids[:, 0]]) == 1.0
