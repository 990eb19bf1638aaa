"""Best matching (Hungarian on MSE) and label recovery scores."""

from __future__ import annotations

import collections
import doctest

import numpy as np
import pytest

import fedpriv.metrics.labels as labels_module
import fedpriv.metrics.matching as matching_module
from fedpriv.metrics import best_match, label_accuracy, pairwise_mse


def test_pairwise_mse_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 5)).astype(np.float32)
    b = rng.normal(size=(6, 3, 5)).astype(np.float32)
    expected = ((a[:, None] - b[None]) ** 2).reshape(4, 6, -1).mean(-1)
    np.testing.assert_allclose(pairwise_mse(a, b), expected, rtol=1e-5)


def test_best_match_recovers_a_known_permutation():
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=(7, 8, 8, 1)).astype(np.float32)
    permutation = rng.permutation(7)
    reconstructed = truth[permutation] + rng.normal(scale=0.05, size=truth.shape).astype(np.float32)
    found = best_match(reconstructed, truth)
    np.testing.assert_array_equal(found, permutation)
    # truth[found] is the truth in the reconstructions' order.
    assert np.abs(truth[found] - reconstructed).max() < 0.3


def test_best_match_is_an_assignment_not_nearest_neighbours():
    truth = np.array([[0.0], [1.0]], np.float32)
    reconstructed = np.array([[0.4], [0.45]], np.float32)  # both nearest to record 0
    # Total MSE 0.16 + 0.3025 beats 0.36 + 0.2025.
    np.testing.assert_array_equal(best_match(reconstructed, truth), [0, 1])


def test_best_match_rectangular_and_errors():
    truth = np.array([[0.0], [5.0], [10.0]], np.float32)
    np.testing.assert_array_equal(best_match(np.array([[9.0], [1.0]], np.float32), truth), [2, 0])
    with pytest.raises(ValueError, match="more reconstructions"):
        best_match(truth, truth[:2])
    with pytest.raises(ValueError, match="same shape"):
        best_match(np.zeros((2, 3)), np.zeros((2, 4)))


def test_label_accuracy_order_free_examples():
    assert label_accuracy([3, 1, 1, 2], [1, 2, 1, 1]) == 0.75
    assert label_accuracy([0, 1, 2, 3], [3, 2, 1, 0]) == 1.0
    assert label_accuracy([0, 1, 2, 3], [3, 2, 1, 0], order_free=False) == 0.0
    assert label_accuracy([5, 5, 5], [5, 4, 4]) == pytest.approx(1 / 3)
    # Leading axes are separate batches: (1.0 + 0.5) / 2.
    assert label_accuracy([[1, 2], [7, 7]], [[2, 1], [7, 8]]) == 0.75


def test_label_accuracy_matches_counter_on_random_batches():
    rng = np.random.default_rng(2)
    predicted = rng.integers(0, 4, size=(50, 9))
    true = rng.integers(0, 4, size=(50, 9))
    expected = np.mean([sum((collections.Counter(p) & collections.Counter(t)).values()) / 9
                        for p, t in zip(predicted, true)])
    assert label_accuracy(predicted, true) == pytest.approx(expected, abs=1e-6)
    assert label_accuracy(predicted, true, order_free=False) == pytest.approx(np.mean(predicted == true), abs=1e-6)


def test_label_accuracy_errors():
    with pytest.raises(ValueError, match="same non-empty shape"):
        label_accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="integer"):
        label_accuracy(np.array([1.0]), np.array([1]))


@pytest.mark.parametrize("module", [matching_module, labels_module])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
