"""Imprint attack (Fowl et al. 2022, arXiv 2110.13057): exact records from binned biases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks.imprint import bin_levels, ImprintConfig, make_imprint_model, recover_from_imprint
from fedpriv.metrics.matching import best_match
from fedpriv.models.mlp import mlp
from tests.attacks.helpers import observe

SHAPE = (8, 8, 1)


def exact_recoveries(reconstructed, truth, tolerance=1e-4):
    """How many true records some candidate equals to relative error < tolerance (best assignment)."""
    candidates = reconstructed[np.isfinite(reconstructed).reshape(len(reconstructed), -1).all(axis=1)]
    permutation = best_match(candidates, truth)
    matched = truth[permutation].reshape(len(candidates), -1)
    error = np.linalg.norm(candidates.reshape(len(candidates), -1) - matched, axis=1) / np.linalg.norm(matched, axis=1)
    return int(np.sum(error < tolerance)), error


def singleton_bins(measured, edges):
    """Oracle: records alone in their cell [q_i, q_{i+1}) (below q_1 is never seen)."""
    cells = np.searchsorted(edges, measured, side="right") - 1
    counts = np.bincount(cells[cells >= 0], minlength=len(edges))
    return int(np.sum(counts == 1))


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    base = mlp(SHAPE, 4, hidden_sizes=(32,))
    public = rng.random((4096, *SHAPE)).astype(np.float32)
    return base, public


def test_imprint_model_keeps_the_interface_and_nearly_the_function(setting):
    base, public = setting
    rng = np.random.default_rng(11)
    model, imprint = make_imprint_model(base, bins=128, public_inputs=public)
    params = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    honest = {name: value for name, value in params.items() if name != "imprint"}
    np.testing.assert_array_equal(params["imprint"]["bias"], imprint["bias"])
    assert model.input_shape == SHAPE and model.head_names == base.head_names
    x = rng.random((16, *SHAPE)).astype(np.float32)
    logits, honest_logits = model.apply(params, x), base.apply(honest, x)
    assert logits.shape == (16, 4)
    # The block adds output_scale * mean_i relu(h - q_i) <= 1e-3 to each pixel.
    assert 0 < float(jnp.max(jnp.abs(logits - honest_logits))) < 1e-2
    # Every kernel column is the measurement (mean pixel); the biases are increasing quantiles.
    kernel = np.asarray(imprint["kernel"])
    np.testing.assert_allclose(kernel, np.full_like(kernel, 1e-4 / 64), rtol=1e-6)
    edges = -np.asarray(imprint["bias"]) / 1e-4
    measured = public.reshape(len(public), -1).mean(axis=1)
    np.testing.assert_allclose(edges, np.quantile(measured, bin_levels(ImprintConfig(bins=128))), rtol=1e-5)


def lone_record_errors(candidates, truth, measured, edges):
    """Oracle from the ground-truth binning: each lone record's error in its own bin."""
    cells = np.searchsorted(edges, measured, side="right") - 1
    counts = np.bincount(cells[cells >= 0], minlength=len(edges))
    lone = [j for j in range(len(truth)) if cells[j] >= 0 and counts[cells[j]] == 1]
    return np.array([np.linalg.norm(candidates[cells[j]] - truth[j]) / np.linalg.norm(truth[j]) for j in lone])


def test_recovers_lone_records_exactly_from_fedsgd_updates(setting):
    base, public = setting
    rng = np.random.default_rng(12)
    model, imprint = make_imprint_model(base, bins=1024, public_inputs=public)
    params = model.init(jax.random.key(1), jnp.zeros((1, *SHAPE)))
    clients, batch = 4, 64
    x = rng.random((clients, 1, batch, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 4, (clients, 1, batch)).astype(np.int32)
    reconstruction = recover_from_imprint(observe(model, params, x, y))
    assert reconstruction.inputs.shape == (clients, 1, 1024, *SHAPE)
    edges = -np.asarray(imprint["bias"], np.float64) / 1e-4
    recovered, lone_errors = 0, []
    for client in range(clients):
        truth = x[client, 0]
        count, _ = exact_recoveries(reconstruction.inputs[client, 0], truth)
        recovered += count
        measured = truth.reshape(batch, -1).astype(np.float64).mean(axis=1)
        lone_errors.append(lone_record_errors(reconstruction.inputs[client, 0], truth, measured, edges))
    lone_errors = np.concatenate(lone_errors)
    # 236 of 256 records are alone in their bin (92 %; theory (k/(k+1))^N = 94 %); each comes back
    # to float32 accuracy (cancellation in the cumulative sums costs a little when g_j is small).
    assert len(lone_errors) == 236 and np.max(lone_errors) < 1e-3
    assert recovered == np.sum(lone_errors < 1e-4) == 234
    assert recovered / (clients * batch) >= 0.9


def test_recovers_from_the_aggregate_of_several_clients(setting):
    base, public = setting
    rng = np.random.default_rng(13)
    model, _ = make_imprint_model(base, bins=1024, public_inputs=public)
    params = model.init(jax.random.key(2), jnp.zeros((1, *SHAPE)))
    x = rng.random((4, 1, 16, *SHAPE)).astype(np.float32)  # 4 hospitals x 16 records = 64
    y = rng.integers(0, 4, (4, 1, 16)).astype(np.int32)
    observation = observe(model, params, x, y)
    reconstruction = recover_from_imprint(observation, aggregate=True)
    assert reconstruction.inputs.shape[0] == 1 and reconstruction.victims == (0,)
    count, _ = exact_recoveries(reconstruction.inputs[0, 0], x.reshape(64, *SHAPE))
    assert count == 64  # the whole cohort's batch, although only the sum was seen


def test_known_gaussian_distribution_and_random_direction(setting):
    base, _ = setting
    rng = np.random.default_rng(14)
    model, imprint = make_imprint_model(base, bins=512, measurement="random", key=jax.random.key(3),
                                        measurement_mean=0.0, measurement_std=1.0)
    direction = np.asarray(imprint["kernel"][:, 0]) / 1e-4
    assert abs(np.linalg.norm(direction) - 1) < 1e-5
    params = model.init(jax.random.key(3), jnp.zeros((1, *SHAPE)))
    x = rng.normal(size=(1, 1, 64, *SHAPE)).astype(np.float32)  # v . x ~ N(0, 1) for a unit v
    y = rng.integers(0, 4, (1, 1, 64)).astype(np.int32)
    reconstruction = recover_from_imprint(observe(model, params, x, y))
    count, _ = exact_recoveries(reconstruction.inputs[0, 0], x[0, 0])
    edges = -np.asarray(imprint["bias"], np.float64) / 1e-4
    assert count == singleton_bins(x[0, 0].reshape(64, -1).astype(np.float64) @ direction, edges) == 56


def test_bad_inputs_fail_before_compute(setting):
    base, public = setting
    rng = np.random.default_rng(15)
    with pytest.raises(ValueError, match="bins must be an integer >= 2, got 1"):
        make_imprint_model(base, bins=1, public_inputs=public)
    with pytest.raises(ValueError, match="measurement must be one of"):
        make_imprint_model(base, bins=8, measurement="max", public_inputs=public)
    with pytest.raises(ValueError, match="needs a key"):
        make_imprint_model(base, bins=8, measurement="random", public_inputs=public)
    with pytest.raises(ValueError, match="public_inputs or both measurement_mean"):
        make_imprint_model(base, bins=8)
    with pytest.raises(ValueError, match="public_inputs must have shape"):
        make_imprint_model(base, bins=8, public_inputs=public[:, :4])
    with pytest.raises(ValueError, match="not both"):
        make_imprint_model(base, bins=8, public_inputs=public, measurement_mean=0.0, measurement_std=1.0)
    with pytest.raises(ValueError, match="measurement_std must be finite and > 0"):
        make_imprint_model(base, bins=8, measurement_mean=0.0, measurement_std=0.0)
    params = base.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    honest = observe(base, params, np.zeros((1, 1, 2, *SHAPE), np.float32), np.zeros((1, 1, 2), np.int32))
    with pytest.raises(ValueError, match="no 'imprint' update"):
        recover_from_imprint(honest)
