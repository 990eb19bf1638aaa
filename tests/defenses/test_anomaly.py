"""Server-side screening: sketch, robust z-scores, VAE, report; rates on synthetic attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.anomaly import (AnomalyConfig, VaeConfig, fit_vae_detector, robust_z_scores, screen_updates,
                                      sketch_updates, update_features, vae_errors)
from fedpriv.models.mlp import mlp

SHAPE, CLASSES, BATCH = (8, 8, 1), 4, 16
MODEL = mlp(SHAPE, CLASSES, hidden_sizes=(32,))
PARAMS = MODEL.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
PROJECTION_KEY = jax.random.key(7)
ATTACKS = ("scaled", "sign_flip", "noise", "imprint")


def client_batches(generator, prototypes, clients):
    """Non-IID hospitals: each draws its labels from its own Dirichlet(0.5) class mixture."""
    labels = np.stack([generator.choice(CLASSES, size=BATCH, p=generator.dirichlet(np.full(CLASSES, 0.5)))
                       for _ in range(clients)])
    inputs = prototypes[labels] + 0.3 * generator.normal(size=(clients, BATCH, *SHAPE))
    return inputs.astype(np.float32), labels.astype(np.int32)


@jax.jit
def fedsgd_updates(x, y):
    gradient = lambda xx, yy: jax.grad(lambda p: MODEL.per_example_loss(p, {"x": xx, "y": yy}).mean())(PARAMS)
    return jax.tree_util.tree_map(jnp.negative, jax.vmap(gradient)(x, y))


def global_norm(update):
    return float(np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree_util.tree_leaves(update))))


def craft(kind, update, generator, prototypes):
    """Crafted updates: boosted, reversed, random of a benign norm, or imprint-shaped."""
    if kind == "scaled":
        return jax.tree_util.tree_map(lambda leaf: 10 * leaf, update)
    if kind == "sign_flip":
        return jax.tree_util.tree_map(jnp.negative, update)
    if kind == "noise":
        noise = jax.tree_util.tree_map(lambda leaf: generator.normal(size=leaf.shape).astype(np.float32), update)
        return jax.tree_util.tree_map(lambda leaf: leaf * global_norm(update) / global_norm(noise), noise)
    # Imprint-shaped: first-layer unit i holds sum_j g_j x_j over records measured above edge i,
    # the rest is zero; scaled to the benign norm so the norm screen alone cannot see it.
    inputs, _ = client_batches(generator, prototypes, 1)
    inputs = inputs[0].reshape(BATCH, -1)
    measured, weights = inputs.mean(axis=1), generator.normal(size=BATCH)
    edges = np.quantile(measured, np.linspace(0, 1, update["dense_0"]["kernel"].shape[1] + 1)[:-1])
    above = (measured[:, None] >= edges[None, :]) * weights[:, None]
    crafted = jax.tree_util.tree_map(jnp.zeros_like, update)
    crafted["dense_0"] = {"kernel": jnp.asarray(inputs.T @ above), "bias": jnp.asarray(above.sum(axis=0))}
    return jax.tree_util.tree_map(lambda leaf: leaf * global_norm(update) / global_norm(crafted), crafted)


ROUND = 20  # clients per round; one shape everywhere, so each function compiles once


def benign_sketches(generator, prototypes, rounds):
    updates = [fedsgd_updates(*client_batches(generator, prototypes, ROUND)) for _ in range(rounds)]
    return np.concatenate([update_features(u, jnp.ones(ROUND), PROJECTION_KEY, 256)["sketch"] for u in updates])


@pytest.fixture(scope="module")
def world():
    generator = np.random.default_rng(0)
    prototypes = generator.random((CLASSES, *SHAPE)).astype(np.float32)
    detector = fit_vae_detector(benign_sketches(generator, prototypes, 10), jax.random.key(1), VaeConfig(steps=300))
    return prototypes, detector


def test_count_sketch_preserves_inner_products_in_expectation():
    generator = np.random.default_rng(1)
    a = {"w": generator.normal(size=(1, 20, 30)), "b": generator.normal(size=(1, 30))}
    b = jax.tree_util.tree_map(lambda leaf: leaf + generator.normal(size=leaf.shape), a)
    pair = jax.tree_util.tree_map(lambda x, y: jnp.asarray(np.concatenate([x, y]), jnp.float32), a, b)
    sketch = jax.jit(sketch_updates, static_argnums=2)
    sketches = np.stack([sketch(pair, key, 64) for key in jax.random.split(jax.random.key(0), 100)])
    exact = sum(float(np.sum(x * y)) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    estimates = np.sum(np.asarray(sketches[:, 0] * sketches[:, 1], np.float64), axis=1)
    # Unbiased: the mean over 100 keys is within 4 standard errors of the exact inner product.
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / np.sqrt(100)
    assert abs(estimates.mean() / exact - 1) < 0.05
    # A sketch is a signed sum of coordinates, so it is linear: S(2a) = 2 S(a).
    np.testing.assert_allclose(sketch_updates(jax.tree_util.tree_map(lambda x: 2 * x, pair), jax.random.key(3), 64),
                               2 * sketch_updates(pair, jax.random.key(3), 64), rtol=1e-6)


def test_robust_z_scores_equal_the_median_mad_formula():
    values = np.array([1.0, 2.0, 2.5, 3.0, 100.0, -7.0, 4.0], np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0, 1], bool)
    kept = values[mask]
    median = np.median(kept)
    expected = (values - median) / (1.4826 * np.median(np.abs(kept - median)))
    np.testing.assert_allclose(robust_z_scores(jnp.asarray(values), jnp.asarray(mask)), expected, rtol=1e-5)
    floored = robust_z_scores(jnp.asarray(values), jnp.asarray(mask), 10.0)
    np.testing.assert_allclose(floored, (values - median) / 10.0, rtol=1e-5)


def test_nonfinite_updates_are_always_rejected_and_counted(world):
    prototypes, _ = world
    generator = np.random.default_rng(2)
    updates = fedsgd_updates(*client_batches(generator, prototypes, ROUND))
    kernel = np.asarray(updates["head"]["kernel"]).copy()
    kernel[2, 0, 0], kernel[5, 3, 1] = np.nan, np.inf
    updates = {**updates, "head": {**updates["head"], "kernel": jnp.asarray(kernel)}}
    mask = np.ones(ROUND)
    mask[7] = 0  # absent: excluded but not reported
    report = screen_updates(updates, mask, PROJECTION_KEY)
    assert report.num_nonfinite == 2 and np.flatnonzero(report.nonfinite).tolist() == [2, 5]
    assert report.reasons[2] == report.reasons[5] == ("non-finite values",)
    assert not report.accepted[[2, 5, 7]].any() and 7 not in report.reasons
    assert set(np.flatnonzero(~report.accepted)) == {7, *report.rejected}
    # The non-finite updates are zeroed before the sketch: the others' scores stay finite.
    assert np.all(np.isfinite(report.norm_z[report.accepted])) and np.all(np.isfinite(report.cosine_z))


def test_detection_and_false_positive_rates_on_synthetic_rounds(world):
    prototypes, detector = world
    generator = np.random.default_rng(3)
    flagged = {kind: 0 for kind in ("benign", *ATTACKS)}
    by_z = {kind: 0 for kind in ATTACKS}
    rounds = 8
    for _ in range(rounds):
        honest = fedsgd_updates(*client_batches(generator, prototypes, ROUND))
        clients = [jax.tree_util.tree_map(lambda leaf: leaf[i], honest) for i in range(16)]
        clients += [craft(kind, jax.tree_util.tree_map(lambda leaf: leaf[16 + i], honest), generator, prototypes)
                    for i, kind in enumerate(ATTACKS)]
        report = screen_updates(jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *clients), np.ones(ROUND),
                                PROJECTION_KEY, detector=detector)
        flagged["benign"] += sum(i in report.reasons for i in range(16))
        for i, kind in enumerate(ATTACKS):
            flagged[kind] += 16 + i in report.reasons
            by_z[kind] += any("z-score" in why for why in report.reasons.get(16 + i, ()))
    # Measured: every crafted update is caught, the norm-matched ones by the VAE alone (the
    # z-scores see only the scaled ones: these non-IID hospitals' cosines spread widely);
    # 4 of 128 benign updates are flagged (3.1 %; VAE quantile 0.99 set on 50 held-out updates).
    assert flagged == {"benign": 4, "scaled": 8, "sign_flip": 8, "noise": 8, "imprint": 8}
    assert by_z == {"scaled": 8, "sign_flip": 0, "noise": 0, "imprint": 0}


def test_vae_threshold_is_a_benign_quantile_and_inputs_are_checked(world):
    prototypes, detector = world
    errors = np.asarray(vae_errors(detector, benign_sketches(np.random.default_rng(4), prototypes, 10)))
    assert np.mean(errors > detector.threshold) == 0.025  # 5 of 200 fresh benign updates
    fresh = fedsgd_updates(*client_batches(np.random.default_rng(5), prototypes, ROUND))
    with pytest.raises(ValueError, match=r"sketches must be \[N, 256\]"):
        vae_errors(detector, np.zeros((3, 10)))
    with pytest.raises(ValueError, match="detector was fitted on 256-bucket sketches, config has projection_dim=64"):
        screen_updates(fresh, np.ones(ROUND), PROJECTION_KEY, AnomalyConfig(projection_dim=64), detector)
    with pytest.raises(ValueError, match=r"benign_sketches must be a finite \[N >= 8, P\]"):
        fit_vae_detector(np.zeros((4, 8)), jax.random.key(0))
    with pytest.raises(ValueError, match="projection_dim must be an integer >= 1, got 0"):
        AnomalyConfig(projection_dim=0)
    with pytest.raises(ValueError, match="norm_z_threshold must be a finite number > 0"):
        AnomalyConfig(norm_z_threshold=-1.0)
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\), got 1.0"):
        VaeConfig(quantile=1.0)
    with pytest.raises(ValueError, match="client_mask must be"):
        screen_updates(fresh, np.ones(3), PROJECTION_KEY)
