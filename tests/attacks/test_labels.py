"""Label counts for batches: LLG+ (Wainakh et al. 2022) and iLRG-style (Ma et al. 2023)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks.labels import (_fedsgd_head_gradients, head_features, idlg_labels, ilrg_label_counts,
                                    labels_from_counts, llg_label_counts, round_counts)
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.metrics.labels import label_count_accuracy, label_counts
from fedpriv.models.lenet import lenet
from fedpriv.models.mlp import mlp
from tests.attacks.helpers import observe

CLASSES = 10
BATCHES = 20


def _observed_batches(model, batch, seed, batches=BATCHES, loop=False):
    params = model.init(jax.random.key(0), jnp.zeros((1, *model.input_shape)))
    rng = np.random.default_rng(seed)
    x = rng.random((batches, 1, batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, CLASSES, (batches, 1, batch)).astype(np.int32)
    if not loop:
        return params, x, y, observe(model, params, x, y)
    # Convolution gradients are slow under vmap on CPU: one jitted client call per batch.
    update = jax.jit(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)))
    updates = [update(params, {"x": x[c], "y": y[c]}, jnp.ones((1, batch)), jax.random.key(0))[0]
               for c in range(batches)]
    template = observe(model, params, x[:1, :, :1], y[:1, :, :1])
    metadata = dataclasses.replace(template.metadata, batch_size=batch, client_ids=tuple(range(batches)))
    stacked = jax.tree_util.tree_map(lambda *u: jnp.stack(u), *updates)
    return params, x, y, dataclasses.replace(template, updates=stacked, metadata=metadata)


@pytest.fixture(scope="module")
def relu_mlp_batches():
    model = mlp((8, 8, 1), CLASSES, hidden_sizes=(256, 256), activation="relu")
    return (model, *_observed_batches(model, 16, 0))


@pytest.fixture(scope="module")
def lenet_batches():
    model = lenet((32, 32, 3), CLASSES)
    return (model, *_observed_batches(model, 8, 0, batches=10, loop=True))


def test_count_identity_holds_with_the_true_probabilities(relu_mlp_batches):
    # Oracle: n = sum_b p_b - B dL/db exactly, so the gradient read off the update is right.
    model, params, x, y, obs = relu_mlp_batches
    _, bias = _fedsgd_head_gradients(obs, model, range(BATCHES), need_bias=True)
    probabilities = np.asarray(jax.nn.softmax(jax.vmap(lambda b: model.apply(params, b))(x[:, 0])), np.float64)
    estimate = probabilities.sum(axis=1) - 16 * bias
    np.testing.assert_allclose(estimate, label_counts(y[:, 0], CLASSES), atol=1e-4)


def test_head_features_are_the_inputs_of_the_head():
    model = mlp((3, 3, 1), 4, hidden_sizes=(5,))
    params = model.init(jax.random.key(1), jnp.zeros((1, 3, 3, 1)))
    x = jax.random.uniform(jax.random.key(2), (6, 3, 3, 1))
    hidden = jax.nn.relu(x.reshape(6, -1) @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    np.testing.assert_allclose(head_features(model, params, x), hidden, rtol=1e-5, atol=1e-6)


def test_counts_on_an_untrained_relu_mlp_batch_16(relu_mlp_batches):
    # Measured over 20 batches of 16: LLG+ 20/20 exact vectors, iLRG-style (pooled) 20/20.
    model, _, _, y, obs = relu_mlp_batches
    true = label_counts(y[:, 0], CLASSES)
    llg = llg_label_counts(obs, model, range(BATCHES), jax.random.key(5))
    ilrg = ilrg_label_counts(obs, model, range(BATCHES))
    for counts in (llg, ilrg):
        np.testing.assert_array_equal(counts.sum(axis=1), 16)
        assert label_count_accuracy(counts, true)["vector_exact"] >= 0.95
    class_wise = ilrg_label_counts(obs, model, range(BATCHES), embeddings="class")
    assert label_count_accuracy(class_wise, true)["class_exact"] >= 0.85  # measured 0.92


def test_counts_on_dlg_lenet_batch_8(lenet_batches):
    # Measured over 20 batches of 8 (10 here): LLG+ and iLRG-style both 20/20 exact vectors.
    model, _, _, y, obs = lenet_batches
    true = label_counts(y[:, 0], CLASSES)
    assert label_count_accuracy(ilrg_label_counts(obs, model, range(10)), true)["vector_exact"] >= 0.9
    llg = llg_label_counts(obs, model, range(10), jax.random.key(5))
    assert label_count_accuracy(llg, true)["vector_exact"] >= 0.9


def test_rounding_and_labels_from_counts():
    np.testing.assert_array_equal(round_counts(np.array([[2.6, 0.7, -0.2, 0.9], [0.2, 0.2, 0.2, 3.4]]), 4),
                                  [[2, 1, 0, 1], [0, 0, 0, 4]])
    np.testing.assert_array_equal(labels_from_counts(np.array([[0, 2, 1], [3, 0, 0]])), [[1, 1, 2], [0, 0, 0]])
    with pytest.raises(ValueError, match="same total"):
        labels_from_counts(np.array([[1, 0], [1, 1]]))


def test_count_methods_refuse_what_they_cannot_read(relu_mlp_batches):
    model, params, x, y, _ = relu_mlp_batches
    fedavg = observe(model, params, x[:2].repeat(2, axis=1), y[:2].repeat(2, axis=1), algorithm="fedavg")
    with pytest.raises(ValueError, match="local_steps=1"):
        llg_label_counts(fedavg, model, [0], jax.random.key(0))
    obs = observe(model, params, x[:2], y[:2])
    with pytest.raises(ValueError, match="positions"):
        ilrg_label_counts(obs, model, [5])
    with pytest.raises(ValueError, match="embeddings"):
        ilrg_label_counts(obs, model, [0], embeddings="mean")
    with pytest.raises(ValueError, match="batch_size=16"):
        idlg_labels(obs, model, [0])


def test_docstring_examples():
    import doctest

    import fedpriv.attacks.labels as labels_module
    result = doctest.testmod(labels_module)
    assert result.attempted >= 2 and result.failed == 0
