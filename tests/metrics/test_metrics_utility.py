"""Test accuracy: against NumPy argmax, with a partial last batch, compiled once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.metrics import accuracy
from fedpriv.metrics import utility as utility_module
from fedpriv.models import mlp
from fedpriv.typing import Model


def _logits_model(num_classes):
    """A model whose inputs are its logits (times a learnable 1), so argmax is known."""
    def apply(params, x):
        return x * params["scale"]

    def per_example_loss(params, batch):
        raise NotImplementedError

    return Model(init=lambda key, x: {"scale": jnp.ones(())}, apply=apply, per_example_loss=per_example_loss,
                 input_shape=(num_classes,), num_classes=num_classes, head_names=(), name="logits")


def test_accuracy_matches_numpy_argmax_with_partial_last_batch():
    rng = np.random.default_rng(0)
    model = _logits_model(5)
    params = model.init(jax.random.key(0), None)
    for total in (23, 17, 8, 3):  # 23 = 2 full batches of 8 + 7; 3 < one batch
        logits = rng.normal(size=(total, 5)).astype(np.float32)
        labels = rng.integers(0, 5, size=total)
        labels[: total // 2] = np.argmax(logits[: total // 2], axis=1)  # make it non-trivial
        expected = np.mean(np.argmax(logits, axis=1) == labels)
        assert accuracy(model, params, logits, labels, batch_size=8) == pytest.approx(expected, abs=1e-12)


def test_padding_never_counts():
    # Padded rows are zeros -> argmax 0, and padded labels are 0: they would be hits
    # if the mask did not drop them.
    model = _logits_model(3)
    params = model.init(jax.random.key(0), None)
    logits = np.array([[0.0, 1.0, 0.0]] * 5, np.float32)
    assert accuracy(model, params, logits, np.zeros(5, np.int32), batch_size=4) == 0.0
    assert accuracy(model, params, logits, np.ones(5, np.int32), batch_size=4) == 1.0


def test_one_compilation_for_any_set_size():
    model = mlp((4, 4, 1), 3, hidden_sizes=(8,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    rng = np.random.default_rng(1)
    before = utility_module._count_correct._cache_size()
    results = []
    for total in (10, 7, 33, 1):
        images = rng.uniform(size=(total, 4, 4, 1)).astype(np.float32)
        labels = rng.integers(0, 3, size=total)
        results.append(accuracy(model, params, images, labels, batch_size=16))
        expected = np.mean(np.argmax(np.asarray(model.apply(params, images)), axis=1) == labels)
        assert results[-1] == pytest.approx(expected, abs=1e-12)
    assert utility_module._count_correct._cache_size() == before + 1


def test_accuracy_errors():
    model = _logits_model(3)
    params = model.init(jax.random.key(0), None)
    with pytest.raises(ValueError, match="batch_size"):
        accuracy(model, params, np.zeros((2, 3)), np.zeros(2), batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        accuracy(model, params, np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        accuracy(model, params, np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="at least one"):
        accuracy(model, params, np.zeros((0, 3)), np.zeros(0))
