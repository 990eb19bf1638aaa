"""Client-side screening of received models: imprint and fishing caught, benign rounds pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks.imprint import make_imprint_model, recover_from_imprint
from fedpriv.defenses.model_screening import (ModelHistory, ModelScreeningConfig, record_model, screen_model,
                                              unit_statistics)
from fedpriv.models.mlp import mlp
from tests.attacks.helpers import observe

SHAPE, CLASSES, BATCH, CLIENTS = (8, 8, 1), 4, 16, 10
MODEL = mlp(SHAPE, CLASSES, hidden_sizes=(32,))


def client_batches(generator, prototypes, clients):
    labels = np.stack([generator.choice(CLASSES, size=BATCH, p=generator.dirichlet(np.full(CLASSES, 0.5)))
                       for _ in range(clients)])
    inputs = prototypes[labels] + 0.3 * generator.normal(size=(clients, BATCH, *SHAPE))
    return inputs.astype(np.float32), labels.astype(np.int32)


@jax.jit
def fedsgd_round(params, x, y):
    """One FedSGD round with server learning rate 0.5: the mean of the clients' gradients."""
    loss = lambda p: MODEL.per_example_loss(p, {"x": x.reshape(-1, *SHAPE), "y": y.reshape(-1)}).mean()
    return jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, jax.grad(loss)(params))


def fish_class(params, target, shrink=1e-3, boost=8.0):
    """Class fishing in the manner of Wen et al. 2022 (arXiv 2202.00580): every other class's
    head column is shrunk and its bias raised, so the model is confidently wrong only on the
    target class and the update is dominated by its records."""
    others = np.arange(CLASSES) != target
    kernel = np.asarray(params["head"]["kernel"]).copy()
    bias = np.asarray(params["head"]["bias"]).copy()
    kernel[:, others] *= shrink
    bias[others] += boost
    return {**params, "head": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}


@pytest.fixture(scope="module")
def training_run():
    """Global models of 25 benign FedSGD rounds over non-IID hospitals."""
    generator = np.random.default_rng(0)
    prototypes = generator.random((CLASSES, *SHAPE)).astype(np.float32)
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    models = [params]
    for _ in range(25):
        params = fedsgd_round(params, *client_batches(generator, prototypes, CLIENTS))
        models.append(params)
    return models, prototypes


def test_unit_statistics_against_hand_built_layers():
    generator = np.random.default_rng(1)
    kernel = generator.normal(size=(20, 6))
    assert unit_statistics(kernel) == {"units": 6.0, "duplicate_fraction": 0.0, "largest_duplicate_group": 1.0}
    kernel[:, 4] = 3 * kernel[:, 1]  # a scaled copy is a duplicate direction
    kernel[:, 5] = kernel[:, 1]
    assert unit_statistics(kernel) == {"units": 6.0, "duplicate_fraction": 0.5, "largest_duplicate_group": 3.0}
    kernel[:, [0, 2]] = 0.0  # zero columns are never duplicates
    assert unit_statistics(kernel)["duplicate_fraction"] == 0.5


def test_benign_rounds_pass_and_crafted_models_are_refused(training_run):
    models, prototypes = training_run
    history = ModelHistory()
    false_positives, imprint_caught, imprint_caught_cold, fishing_caught, crafted = 0, 0, 0, 0, 0
    for round_index, params in enumerate(models):
        report = screen_model(params, history)
        false_positives += not report.accepted
        for bins, measurement in ((64, "mean"), (256, "random")):
            _, imprint = make_imprint_model(MODEL, bins=bins, measurement=measurement, key=jax.random.key(round_index),
                                            public_inputs=prototypes[np.arange(256) % CLASSES]
                                            + 0.3 * np.random.default_rng(round_index).normal(size=(256, *SHAPE)))
            malicious = {**params, "imprint": imprint}
            imprint_caught += not screen_model(malicious, history).accepted
            # A client seeing the imprint model first (no history) still spots its duplicated units.
            cold = screen_model(malicious, ModelHistory())
            imprint_caught_cold += not cold.accepted
            assert any("imprint-style" in reason for reason in cold.reasons)
            crafted += 1
        fishing = screen_model(fish_class(params, target=round_index % CLASSES), history)
        fishing_caught += not fishing.accepted
        if report.accepted:
            history = record_model(history, params)
    # Measured over 26 global models (random init + 25 rounds): no benign model refused,
    # every imprint model (52) and every fishing model (26) refused.
    assert false_positives == 0
    assert imprint_caught == imprint_caught_cold == crafted == 52
    assert fishing_caught == 26
    assert len(history.log_changes["['head']['kernel']"]) == 25


def test_change_screen_catches_a_jump_that_the_structure_checks_miss(training_run):
    models, _ = training_run
    history = ModelHistory()
    for params in models[:8]:
        history = record_model(history, params)
    # A model moved 20x further than usual in one round, without any structural oddity.
    jump = jax.tree_util.tree_map(lambda new, old: old + 20 * (new - old), models[8], models[7])
    report = screen_model(jump, history)
    assert not report.accepted and all("change z-score" in reason for reason in report.reasons)
    assert screen_model(models[8], history).accepted
    # Fewer than min_history recorded changes: the change check does not run yet.
    short = record_model(record_model(ModelHistory(), models[0]), models[1])
    assert screen_model(jax.tree_util.tree_map(lambda new, old: old + 20 * (new - old), models[2], models[1]),
                        short).accepted


def test_milder_fishing_is_caught_less_often(training_run):
    # Measured limitation: the screen keys on outlying unit norms and unusual changes, so
    # fishing that shrinks the other classes' columns only by half mostly passes.
    models, _ = training_run
    caught = {}
    for shrink, boost in ((0.1, 3.0), (0.5, 1.0), (0.9, 0.3)):
        history, refused = ModelHistory(), 0
        for round_index, params in enumerate(models):
            if round_index >= 4:
                refused += not screen_model(fish_class(params, round_index % CLASSES, shrink, boost), history).accepted
            history = record_model(history, params)
        caught[shrink] = refused
    assert caught == {0.1: 22, 0.5: 3, 0.9: 0}  # of 22 rounds with a change history


def test_screening_prevents_the_imprint_leakage(training_run):
    models, prototypes = training_run
    generator = np.random.default_rng(5)
    model, imprint = make_imprint_model(MODEL, bins=512, public_inputs=prototypes[np.arange(512) % CLASSES]
                                        + 0.3 * generator.normal(size=(512, *SHAPE)))
    malicious = {**models[10], "imprint": imprint}
    x, y = client_batches(generator, prototypes, 1)
    x, y = x[:, None], y[:, None]  # [C, S, B, ...]
    history = ModelHistory()
    for params in models[:10]:
        history = record_model(history, params)
    recovered = {}
    for screening in (False, True):
        if screening and not screen_model(malicious, history).accepted:
            recovered[screening] = 0  # the client refuses to train: nothing is sent
            continue
        candidates = recover_from_imprint(observe(model, malicious, x, y)).inputs[0, 0]
        candidates = candidates[np.isfinite(candidates).reshape(len(candidates), -1).all(axis=1)]
        flat_candidates, truth = candidates.reshape(len(candidates), -1), x[0, 0].reshape(BATCH, -1)
        distances = np.linalg.norm(flat_candidates[:, None] - truth[None], axis=2)
        errors = np.min(distances, axis=0) / np.linalg.norm(truth, axis=1)  # each record's closest candidate
        recovered[screening] = int(np.sum(errors < 1e-4))
    assert recovered == {False: 14, True: 0}  # of 16 records


def test_bad_inputs_fail_loudly(training_run):
    models, _ = training_run
    with pytest.raises(ValueError, match=r"duplicate_cosine must be in \(0, 1\), got 1.5"):
        ModelScreeningConfig(duplicate_cosine=1.5)
    with pytest.raises(ValueError, match="min_history must be an integer >= 2, got 1"):
        ModelScreeningConfig(min_history=1)
    with pytest.raises(ValueError, match="change_z_threshold must be a finite number > 0"):
        ModelScreeningConfig(change_z_threshold=0.0)
    broken = jax.tree_util.tree_map(lambda leaf: leaf.at[0].set(jnp.nan), models[1])
    with pytest.raises(ValueError, match="non-finite values"):
        screen_model(broken)
    with pytest.raises(ValueError, match="architecture differs"):
        record_model(record_model(ModelHistory(), models[0]), {**models[1], "extra": jnp.zeros(3)})
