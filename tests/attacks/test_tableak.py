"""TabLeak (Vero et al., ICML 2023, arXiv 2210.01785) and the tabular metrics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks.protocol import PublicKnowledge
from fedpriv.attacks.inverting_gradients import AttackCompilation
from fedpriv.attacks.tableak import TabLeakConfig, TableLayout, pool_restarts, project, relax, tableak
from fedpriv.data.tabular import make_tabular_ehr_cohort
from fedpriv.metrics.tabular import feature_hits, numeric_tolerance, score_table_records, tabular_accuracy
from fedpriv.models.mlp import mlp
from fedpriv.typing import Observation, ProtocolMetadata
from tests.attacks.helpers import observe

LAYOUT = TableLayout((("age", "numeric", 1), ("sex", "categorical", 2), ("stage", "categorical", 3)))


@pytest.fixture(scope="module")
def ehr_batch_one():
    table = make_tabular_ehr_cohort(300, np.random.default_rng(3))
    model = mlp(table.input_shape, table.num_classes, hidden_sizes=(32,))
    params = model.init(jax.random.key(0), jnp.zeros((1, *table.input_shape)))
    # Two hospitals of one record each, picked so that most comorbidity flags are set in at least one.
    chosen = np.argsort(-table.values[:, 7:].sum(axis=1))[:2]
    x = table.images[chosen].reshape(2, 1, 1, -1)
    y = table.labels[chosen].reshape(2, 1, 1)
    return table, model, observe(model, params, x, y), chosen, y


# 25 s on this 2-core machine under load (two compilations of a gradient of a gradient): slow.
@pytest.mark.slow
def test_tableak_recovers_every_categorical_feature_exactly_at_batch_one(ehr_batch_one):
    table, model, observation, chosen, labels = ehr_batch_one
    config = TabLeakConfig(iterations=150, restarts=2, learning_rate=0.06)
    result = tableak(observation, model, config, TableLayout(table.public_layout()), jax.random.key(1),
                     victims=[0, 1], labels=labels, compilation=AttackCompilation(loop="host", batching="vmap"))
    recovered = table.decode(result.records.inputs.reshape(2, -1))
    categorical = table.is_categorical
    np.testing.assert_array_equal(recovered[:, categorical], table.values[chosen][:, categorical])
    hits = feature_hits(recovered, table.values[chosen], categorical, numeric_tolerance(table.values, categorical))
    # 150 steps leave some numerics short of TabLeak's tolerance (measured: 11 of 12 within it).
    assert hits[:, ~categorical].mean() >= 0.8
    assert np.all(result.records.objective < 1e-2)
    assert result.entropy.shape == (2, 1, len(table.columns))


def test_relax_keeps_numerics_and_puts_each_block_on_the_simplex():
    logits = jnp.array([[0.7, 2.0, 0.0, 1.0, 1.0, 1.0]])
    relaxed = np.asarray(jax.jit(lambda z: relax(z, LAYOUT, temperature=1.0))(logits))
    assert relaxed[0, 0] == pytest.approx(0.7)
    np.testing.assert_allclose(relaxed[0, 1:3], np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum(), rtol=1e-6)
    np.testing.assert_allclose(relaxed[0, 3:], [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_array_equal(project(relaxed, LAYOUT)[0, 1:], [1, 0, 1, 0, 0])


def test_pooled_ensemble_aligns_restarts_by_their_own_objective_and_votes():
    a = np.array([[0.5, 1, 0, 0, 0, 1], [-1.0, 0, 1, 1, 0, 0]], np.float32)
    b = np.array([[-1.1, 0, 1, 1, 0, 0], [0.7, 1, 0, 0, 1, 0]], np.float32)  # a's records, swapped
    c = np.array([[0.6, 1, 0, 0, 0, 1], [-0.9, 0, 1, 1, 0, 0]], np.float32)
    pooled, entropy = pool_restarts(np.stack([a, b, c]), np.array([0.3, 0.1, 0.2]), LAYOUT)
    # Aligned to b (lowest objective): numerics are medians, categories majority votes.
    np.testing.assert_allclose(pooled, [[-1.0, 0, 1, 1, 0, 0], [0.6, 1, 0, 0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(entropy[:, 1], [0.0, 0.0], atol=1e-12)
    two_of_three = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3)
    np.testing.assert_allclose(entropy[:, 2], [0.0, two_of_three], rtol=1e-6)
    numeric_variance = np.var([0.7, 0.5, 0.6])
    assert entropy[1, 0] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * numeric_variance), rel=1e-4)


def test_bad_inputs_are_refused_before_compute():
    model = mlp((7,), 2, hidden_sizes=(4,))  # one input more than LAYOUT encodes
    # Zero params of the model's shapes, traced and never compiled: nothing here may compute.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 7)))
    params = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=1, learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes, client_ids=())
    # An aggregate: nothing per hospital to invert, whatever the numbers (never computed on).
    aggregate = Observation(params=params, updates=jax.tree_util.tree_map(lambda p: p[None], params),
                            aggregated=True, round_index=0, metadata=metadata)
    labels = np.zeros((1, 1, 1), np.int32)
    public = PublicKnowledge(compilation=AttackCompilation())
    with pytest.raises(ValueError, match="table's public column layout"):
        TabLeakConfig().make(model, public)
    with pytest.raises(ValueError, match="encodes 6 features"):
        TabLeakConfig().make(model, dataclasses.replace(public, table_layout=LAYOUT.columns))
    with pytest.raises(ValueError, match="only an aggregate"):
        tableak(aggregate, model, TabLeakConfig(), LAYOUT, jax.random.key(0), victims=[0], labels=labels)
    with pytest.raises(ValueError, match="attack.config.restarts"):
        TabLeakConfig(restarts=0)
    with pytest.raises(ValueError, match="categorical"):
        TableLayout((("sex", "categorical", 1),))


def test_metrics_pair_records_and_count_a_missing_one_as_wrong():
    is_categorical = np.array([False, True, False])
    true = np.array([[60.0, 1, 5.0], [40.0, 0, 7.0], [70.0, 2, 9.0]])
    tolerance = numeric_tolerance(true, is_categorical)  # 0.319 * std: [4.17, 0, 0.521]
    np.testing.assert_allclose(tolerance, 0.319 * true.std(axis=0) * [1, 0, 1])
    recovered = np.array([[41.0, 0, 7.9],  # record 1: age within 4.17, category exact, 7.9 outside 0.52
                          [63.0, 1, 5.2]])  # record 0: every feature within tolerance
    scored = score_table_records(recovered, true, is_categorical, tolerance)
    np.testing.assert_array_equal(scored.hits, [[True, True, True], [True, True, False], [False, False, False]])
    assert scored.missing.tolist() == [2]
    scores = tabular_accuracy(scored.hits, is_categorical)
    assert scores["accuracy"] == pytest.approx(5 / 9)
    assert scores["categorical_accuracy"] == pytest.approx(2 / 3)
    assert scores["numeric_accuracy"] == pytest.approx(3 / 6)
    assert np.isnan(tabular_accuracy(scored.hits[:, [0, 2]], np.array([False, False]))["categorical_accuracy"])
