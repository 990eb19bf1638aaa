"""Label-count and label-set scores against a direct count."""

import collections

import numpy as np
import pytest

from fedpriv.metrics.labels import label_accuracy, label_count_accuracy, label_counts, label_set_accuracy


def test_label_counts_match_a_counter():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(3, 4, 7))
    counts = label_counts(labels, 5)
    assert counts.shape == (3, 4, 5)
    for index in np.ndindex(3, 4):
        expected = collections.Counter(labels[index].tolist())
        assert counts[index].tolist() == [expected[k] for k in range(5)]


def test_count_accuracy_by_hand_and_against_label_accuracy():
    scores = label_count_accuracy([[2, 1, 0], [0, 3, 0]], [[2, 1, 0], [1, 1, 1]])
    assert scores == {"class_exact": 0.5, "vector_exact": 0.5, "instance": pytest.approx(2 / 3)}
    rng = np.random.default_rng(1)
    predicted, true = rng.integers(0, 4, size=(30, 9)), rng.integers(0, 4, size=(30, 9))
    from_counts = label_count_accuracy(label_counts(predicted, 4), label_counts(true, 4))["instance"]
    assert from_counts == pytest.approx(label_accuracy(predicted, true), abs=1e-6)


def test_label_set_accuracy_is_the_jaccard_index_of_present_classes():
    assert label_set_accuracy([3, 1, 0, 0], [2, 0, 2, 0]) == pytest.approx(1 / 3)
    assert label_set_accuracy([1, 1, 0], [5, 2, 0]) == 1.0
    assert label_set_accuracy([[1, 0], [0, 0]], [[1, 0], [0, 0]]) == 1.0  # empty sets agree
    assert label_set_accuracy([[1, 0], [1, 0]], [[0, 1], [1, 0]]) == 0.5


def test_count_scores_reject_bad_input():
    with pytest.raises(ValueError, match="same non-empty shape"):
        label_count_accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative integers"):
        label_set_accuracy([1.0, 2.0], [1, 2])
    with pytest.raises(ValueError, match="lie in"):
        label_counts([0, 5], 5)
