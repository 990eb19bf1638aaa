"""Robust aggregation rules against NumPy/SciPy oracles and hand-built cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fedpriv.defenses.robust_aggregation import (RobustAggregationConfig, coordinate_median, krum_scores,
                                                 multi_krum, robust_aggregate, trimmed_mean)


def random_updates(generator, clients):
    return {"dense": {"kernel": generator.normal(size=(clients, 3, 4)).astype(np.float32),
                      "bias": generator.normal(size=(clients, 4)).astype(np.float32)},
            "head": generator.normal(size=(clients, 2)).astype(np.float32)}


def present_leaves(updates, mask):
    return jax.tree_util.tree_map(lambda leaf: leaf[np.asarray(mask) > 0], updates)


@pytest.mark.parametrize("clients,absent", [(7, ()), (9, (0, 4, 8))])
def test_median_and_trimmed_mean_equal_numpy_on_present_clients(clients, absent):
    generator = np.random.default_rng(clients)
    updates = random_updates(generator, clients)
    mask = np.ones(clients, np.float32)
    mask[list(absent)] = 0
    # Absent clients hold huge values: a rule that looked at them would be far off.
    updates = jax.tree_util.tree_map(lambda leaf: np.where(mask.reshape((-1,) + (1,) * (leaf.ndim - 1)) > 0,
                                                           leaf, 1e6).astype(np.float32), updates)
    kept = present_leaves(updates, mask)
    median = jax.jit(coordinate_median)(updates, mask)
    jax.tree_util.tree_map(lambda got, leaf: np.testing.assert_allclose(got, np.median(leaf, axis=0), rtol=1e-6),
                           median, kept)
    for beta in (0.0, 0.25, 0.49):  # trims 0, 1-2 and 3 values per side
        got = jax.jit(trimmed_mean, static_argnums=2)(updates, mask, beta)
        jax.tree_util.tree_map(
            lambda g, leaf: np.testing.assert_allclose(g, scipy.stats.trim_mean(leaf, beta, axis=0),
                                                       rtol=1e-5, atol=1e-6), got, kept)


def test_rules_with_no_client_present_return_zeros():
    updates = random_updates(np.random.default_rng(0), 4)
    for result in (jax.jit(coordinate_median)(updates, jnp.zeros(4)),
                   jax.jit(lambda u, m: trimmed_mean(u, m, 0.2))(updates, jnp.zeros(4))):
        assert all(float(jnp.max(jnp.abs(leaf))) == 0 for leaf in jax.tree_util.tree_leaves(result))


def test_krum_scores_equal_an_explicit_loop():
    generator = np.random.default_rng(3)
    updates = random_updates(generator, 9)
    mask = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1], np.float32)
    num_byzantine = 2
    flat = np.concatenate([leaf.reshape(9, -1) for leaf in jax.tree_util.tree_leaves(updates)], axis=1)
    flat = flat.astype(np.float64)
    present = np.flatnonzero(mask)
    neighbours = len(present) - num_byzantine - 2
    expected = np.full(9, np.inf)
    for i in present:
        distances = sorted(np.sum((flat[i] - flat[j]) ** 2) for j in present if j != i)
        expected[i] = sum(distances[:neighbours])
    got = np.asarray(jax.jit(krum_scores, static_argnums=2)(updates, mask, num_byzantine))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_krum_picks_the_obvious_inlier_and_multi_krum_skips_attackers():
    # Five honest clients around (1, 1), one at its centre; two attackers far away.
    honest = np.array([[1.0, 1.0], [1.2, 1.0], [0.8, 1.0], [1.0, 1.2], [1.0, 0.8]])
    attackers = np.array([[50.0, 40.0], [40.0, 60.0]])
    updates = {"w": jnp.asarray(np.concatenate([attackers, honest]), jnp.float32)}
    mask = jnp.ones(7)
    krum = jax.jit(multi_krum, static_argnums=(2, 3))
    aggregate, selected = krum(updates, mask, 2, 1)
    assert np.asarray(selected).tolist() == [False, False, True, False, False, False, False]
    np.testing.assert_allclose(aggregate["w"], [1.0, 1.0])
    aggregate, selected = krum(updates, mask, 2, 5)
    assert np.asarray(selected).tolist() == [False, False, True, True, True, True, True]
    np.testing.assert_allclose(aggregate["w"], [1.0, 1.0], atol=1e-6)
    # The mean is dragged off by the attackers; the median and trimmed mean are not.
    assert float(jnp.linalg.norm(jnp.mean(updates["w"], axis=0) - 1.0)) > 5
    np.testing.assert_allclose(jax.jit(coordinate_median)(updates, mask)["w"], [1.0, 1.0])
    # beta = 0.3 of 7 drops 2 per side: per coordinate (1, 1, 1.2) remain.
    trimmed = jax.jit(lambda u, m: trimmed_mean(u, m, 0.3))(updates, mask)
    np.testing.assert_allclose(trimmed["w"], [3.2 / 3, 3.2 / 3], rtol=1e-6)


def test_robust_aggregate_dispatches_and_config_validates():
    updates = random_updates(np.random.default_rng(5), 6)
    mask = jnp.ones(6)
    config = RobustAggregationConfig(rule="trimmed_mean", trim_fraction=0.2)
    aggregate = jax.jit(robust_aggregate, static_argnums=2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, aggregate(updates, mask, config),
                           jax.jit(lambda u, m: trimmed_mean(u, m, 0.2))(updates, mask))
    krum = aggregate(updates, mask, RobustAggregationConfig(rule="krum", num_byzantine=1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, krum,
                           jax.jit(multi_krum, static_argnums=(2, 3))(updates, mask, 1, 1)[0])
    for kwargs, message in [({"rule": "mean"}, "rule must be one of"),
                            ({"rule": "krum", "num_byzantine": -1}, "num_byzantine must be an integer >= 0, got -1"),
                            ({"rule": "krum", "num_selected": 0}, "num_selected must be an integer >= 1, got 0"),
                            ({"rule": "trimmed_mean", "trim_fraction": 0.5}, r"trim_fraction must be in \[0, 0.5\)")]:
        with pytest.raises(ValueError, match=message):
            RobustAggregationConfig(**kwargs)
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(updates, mask, 0.7)


@pytest.mark.slow  # about 10 s on 2 busy cores: compiles the synthetic clients of test_anomaly again
def test_rules_on_synthetic_rounds_with_crafted_updates():
    # Real per-client FedSGD gradients of a small MLP on non-IID hospitals (16 per round)
    # plus one scaled, sign-flipped, noise and imprint-shaped update each.
    from tests.defenses.test_anomaly import ATTACKS, CLASSES, ROUND, SHAPE, client_batches, craft, fedsgd_updates

    generator = np.random.default_rng(3)
    prototypes = np.random.default_rng(0).random((CLASSES, *SHAPE)).astype(np.float32)
    krum = jax.jit(multi_krum, static_argnums=(2, 3))
    median = jax.jit(coordinate_median)
    trimmed = jax.jit(lambda u, m: trimmed_mean(u, m, 0.2))
    excluded = {kind: 0 for kind in ("benign", *ATTACKS)}
    errors = {"mean": [], "median": [], "trimmed_mean": [], "multi_krum": []}
    for _ in range(8):
        honest = fedsgd_updates(*client_batches(generator, prototypes, ROUND))
        clients = [jax.tree_util.tree_map(lambda leaf: leaf[i], honest) for i in range(16)]
        clients += [craft(kind, jax.tree_util.tree_map(lambda leaf: leaf[16 + i], honest), generator, prototypes)
                    for i, kind in enumerate(ATTACKS)]
        updates = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *clients)
        mask = jnp.ones(ROUND)
        aggregate, selected = krum(updates, mask, 4, 12)
        selected = np.asarray(selected)
        excluded["benign"] += int(np.sum(~selected[:16]))
        for i, kind in enumerate(ATTACKS):
            excluded[kind] += int(not selected[16 + i])
        target = jax.tree_util.tree_map(lambda leaf: leaf[:16].mean(axis=0), updates)
        distance = lambda tree: float(np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(
            jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(target)))))
        errors["mean"].append(distance(jax.tree_util.tree_map(lambda leaf: leaf.mean(axis=0), updates)))
        errors["median"].append(distance(median(updates, mask)))
        errors["trimmed_mean"].append(distance(trimmed(updates, mask)))
        errors["multi_krum"].append(distance(aggregate))
    # Multi-Krum (f = 4, m = 12) keeps 12 of 20: it drops every boosted and reversed update,
    # 6 of 8 noise and imprint-shaped ones, and 36 of 128 benign ones (it must drop 8 per round).
    assert excluded == {"benign": 36, "scaled": 8, "sign_flip": 8, "noise": 6, "imprint": 6}
    # Distance to the honest clients' mean: every robust rule halves the plain mean's error.
    mean_error = {rule: np.mean(values) for rule, values in errors.items()}
    np.testing.assert_allclose([mean_error[r] for r in ("mean", "median", "trimmed_mean", "multi_krum")],
                               [1.183, 0.596, 0.448, 0.464], atol=2e-3)
