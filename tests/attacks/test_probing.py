import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.attacks import (AttackCompilation, InvertingGradientsConfig, ProbingConfig, PublicKnowledge,
                             class_confidence, class_prototypes, invert_gradients, prototype_start)
from fedpriv.attacks.inverting_gradients import PUBLIC_MEAN_JITTER, _make_objective
from fedpriv.models.base import from_linen
from tests.attacks.helpers import observe
from tests.federated.conftest import TinyConvNet


def _quadrant_images(rng, labels):
    """8x8 images whose class is the bright quadrant (0: top left, 1: top right, 2: bottom left)."""
    images = 0.2 * rng.random((len(labels), 8, 8, 1)).astype(np.float32)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 0.7
    return images


# One setting for every test, so the inversion step compiles once.
PROBING = ProbingConfig(iterations=60, learning_rate=0.05, tv_weight=0.01, start="public_mean")


@pytest.fixture(scope="module")
def trained_toy():
    model = from_linen(TinyConvNet(), input_shape=(8, 8, 1), num_classes=3, head_names=("head",), name="tiny")
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(3), 20).astype(np.int32)
    images = _quadrant_images(rng, labels)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    optimizer = optax.adam(0.05)

    @jax.jit
    def step(params, state):
        loss = lambda p: jnp.mean(model.per_example_loss(p, {"x": images, "y": labels}))
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    for _ in range(60):
        params, state = step(params, state)
    return model, params, images, labels


def test_prototypes_of_a_trained_model_are_confidently_their_class(trained_toy):
    model, params, images, labels = trained_toy
    start = np.full((8, 8, 1), 0.5, np.float32)
    prototypes = class_prototypes(model, params, PROBING, start)
    assert prototypes.shape == (3, 8, 8, 1) and prototypes.min() >= 0.0 and prototypes.max() <= 1.0
    start_confidence = class_confidence(model, params, np.broadcast_to(start, (3, 8, 8, 1)))
    confidence = class_confidence(model, params, prototypes)
    assert np.all(confidence > 0.99), confidence
    assert start_confidence.min() < 0.5, start_confidence  # the model, not the start, made them confident
    # Each prototype lights its class's quadrant: it correlates best with its own class mean.
    centred = lambda a: (a - a.mean(axis=0)).reshape(len(a), -1)
    class_means = np.stack([images[labels == k].mean(axis=0) for k in range(3)])
    correlation = centred(prototypes) @ centred(class_means).T
    np.testing.assert_array_equal(np.argmax(correlation, axis=1), np.arange(3))


@pytest.fixture(scope="module")
def toy_observation(trained_toy):
    model, params, _, _ = trained_toy
    rng = np.random.default_rng(1)
    y = np.array([[[0]], [[2]]], np.int32)
    x = _quadrant_images(rng, y.reshape(-1)).reshape(2, 1, 1, 8, 8, 1)
    return observe(model, params, x, y)


def test_prototype_initialisation_starts_at_the_labels_prototype_and_adds_the_prior(trained_toy, toy_observation):
    model, params, _, _ = trained_toy
    public_mean = np.full((8, 8, 1), 0.3, np.float32)
    labels = np.array([[[0]], [[2]]], np.int32)
    config = InvertingGradientsConfig(iterations=1, learning_rate=1e-6, init="prototype", label_strategy="known",
                                      prototype=PROBING, prototype_weight=10.0)
    result = invert_gradients(toy_observation, model, config, jax.random.key(1), victims=[0, 1], labels=labels,
                              public_mean=public_mean, compilation=AttackCompilation(loop="host", batching="loop"))
    prototypes = class_prototypes(model, params, config.prototype, public_mean)
    anchors = prototypes[[0, 2]].reshape(2, 1, 1, 8, 8, 1)
    offset = np.abs(result.inputs - anchors)
    assert offset.max() <= PUBLIC_MEAN_JITTER + 1e-4 and offset.mean() > 0.01  # jittered prototype
    assert np.abs(prototypes[0] - prototypes[2]).mean() > 0.05  # distinct starts per label
    # The objective is gradient matching + TV + prototype_weight * mean squared distance to the anchor.
    plain = jax.jit(_make_objective(model, toy_observation.metadata, dataclasses.replace(config, prototype_weight=0.0)))
    for victim in range(2):
        target = jax.tree_util.tree_map(lambda u: u[victim], toy_observation.updates)  # noqa: B023
        matching, _ = plain(jnp.asarray(result.inputs[victim]), labels[victim], target, None, params)
        distance = np.mean((result.inputs[victim] - anchors[victim]) ** 2)
        assert 1e-3 < distance < PUBLIC_MEAN_JITTER ** 2
        np.testing.assert_allclose(result.objective[victim], matching + 10.0 * distance, rtol=1e-4)


def test_bad_probing_inputs_fail_before_compute(trained_toy, toy_observation):
    model, params, _, _ = trained_toy
    with pytest.raises(ValueError, match="attack.config.prototype.start"):
        ProbingConfig(start="zeros")
    with pytest.raises(ValueError, match="attack.config.prototype.iterations"):
        ProbingConfig(iterations=0)
    with pytest.raises(ValueError, match="attack.config.prototype_weight"):
        InvertingGradientsConfig(prototype_weight=-1.0)
    with pytest.raises(ValueError, match="public mean image of shape"):
        class_prototypes(model, params, ProbingConfig(), np.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="labels must lie in"):
        prototype_start(np.zeros((3, 8, 8, 1)), np.array([3]))
    config = InvertingGradientsConfig(init="prototype")
    assert config.needs_public_images
    assert not dataclasses.replace(config, prototype=ProbingConfig(start="constant")).needs_public_images
    with pytest.raises(ValueError, match="needs the attacker's public images"):
        config.make(model, PublicKnowledge(compilation=AttackCompilation()))
    aggregate = dataclasses.replace(toy_observation, aggregated=True)
    with pytest.raises(ValueError, match="per-client"):
        invert_gradients(aggregate, model, config, jax.random.key(0), victims=[0])
