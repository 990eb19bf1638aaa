"""Token scores on hand-computed examples."""

import itertools

import numpy as np
import pytest

from fedpriv.metrics.tokens import (content, longest_common_subsequence, order_accuracy, random_order_accuracy,
                                    rouge_l, rouge_n, set_scores, term_recovery, token_scores)

TRUE = np.array([[10, 11, 12, 11, 13, 0, 0]], np.int32)  # 5 real tokens, 4 distinct
RECOVERED = np.array([[10, 12, 11, 11, 14, 0, 2]], np.int32)  # [CLS] (2) and padding are ignored


def test_set_scores_by_hand():
    # recovered set {10, 11, 12, 14}, true set {10, 11, 12, 13}: 3 hits of 4 each way.
    assert set_scores(RECOVERED, TRUE) == {"precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert set_scores([10, 11], [10, 11, 12, 13]) == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    assert set_scores([0, 1, 2], [0]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}  # nothing to recover
    assert set_scores([], [5])["f1"] == 0.0 and set_scores([7], [5])["f1"] == 0.0
    assert content([3, 0, 1, 2, 4]) == [3, 4]


def test_order_accuracy_and_its_random_baseline_by_hand():
    # Positions 0 and 3 agree out of the 5 real ones.
    assert order_accuracy(RECOVERED, TRUE) == pytest.approx(2 / 5)
    # Counts {10: 1, 11: 2, 12: 1, 13: 1}: (1 + 4 + 1 + 1) / 25.
    assert random_order_accuracy(TRUE) == pytest.approx(7 / 25)
    # The closed form equals the mean over all 120 permutations of the real positions.
    real = TRUE[0, :5]
    accuracies = [np.mean(real[list(p)] == real) for p in itertools.permutations(range(5))]
    assert random_order_accuracy(TRUE) == pytest.approx(np.mean(accuracies))
    batch = np.stack([TRUE[0], TRUE[0]])
    assert order_accuracy(batch, batch) == 1.0
    assert order_accuracy(np.stack([TRUE[0], RECOVERED[0]]), batch) == pytest.approx(0.7)


def test_rouge_by_hand():
    # Unigram multisets: recovered {10, 12, 11, 11, 14} vs true {10, 11, 12, 11, 13}: 4 shared of 5.
    assert rouge_n(RECOVERED, TRUE, 1) == pytest.approx(0.8)
    # Bigrams: rec (10,12) (12,11) (11,11) (11,14); true (10,11) (11,12) (12,11) (11,13): 1 shared of 4.
    assert rouge_n(RECOVERED, TRUE, 2) == pytest.approx(0.25)
    # LCS of 10 12 11 11 14 and 10 11 12 11 13 is 3 (10 12 11 or 10 11 11).
    assert longest_common_subsequence([10, 12, 11, 11, 14], [10, 11, 12, 11, 13]) == 3
    assert rouge_l(RECOVERED, TRUE) == pytest.approx(0.6)
    assert longest_common_subsequence([1, 2, 3, 4], [2, 4, 3]) == 2
    assert rouge_n(TRUE, TRUE, 2) == 1.0 and rouge_l(TRUE, TRUE) == 1.0


def test_token_scores_collects_everything_and_averages_records():
    scores = token_scores(np.stack([RECOVERED[0], TRUE[0]])[:, None], np.stack([TRUE[0], TRUE[0]])[:, None])
    assert scores["term_f1"] == pytest.approx((0.75 + 1.0) / 2)
    assert scores["order_accuracy"] == pytest.approx((0.4 + 1.0) / 2)
    assert scores["random_order_accuracy"] == pytest.approx(7 / 25)
    assert scores["rouge2_f1"] == pytest.approx((0.25 + 1.0) / 2)
    assert scores["rougeL_f1"] == pytest.approx((0.6 + 1.0) / 2)
    assert scores["exact_note"] == 0.5  # the second note is given back token for token, the first is not
    assert term_recovery(RECOVERED, TRUE)["precision"] == 0.75


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        order_accuracy(RECOVERED[:, :4], TRUE)
    with pytest.raises(ValueError, match="integer token ids"):
        rouge_l(RECOVERED.astype(float), TRUE)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        rouge_n(RECOVERED, TRUE, 0)
