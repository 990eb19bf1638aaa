"""Code-recovery scores against hand-computed examples."""

import numpy as np
import pytest

from fedpriv.metrics.codes import (code_set_scores, count_accuracy, hierarchical_match, implied_subtypes,
                                   subtype_accuracy, token_counts, token_mask)
from fedpriv.public import icd10

VOCABULARY = icd10.public_vocabulary()


def _sets(*rows):
    """Boolean [V, vocabulary_size] sets from lists of tokens."""
    mask = np.zeros((len(rows), VOCABULARY.size), bool)
    for v, tokens in enumerate(rows):
        mask[v, VOCABULARY.ids(tokens)] = True
    return mask


def test_token_counts_ignore_padding():
    counts = token_counts(np.array([[3, 3, 5, 0, 0], [0, 0, 0, 0, 0]]), 8)
    np.testing.assert_array_equal(counts, [[0, 0, 0, 2, 0, 1, 0, 0], [0] * 8])
    assert token_mask(np.array([[[1, 2], [2, 0]]]), 4).tolist() == [[False, True, True, False]]
    with pytest.raises(ValueError, match="outside"):
        token_counts(np.array([[9]]), 8)


def test_set_scores_by_hand():
    predicted = _sets(["C61", "I10", "E11.9"], ["SEX_F"], [])
    true = _sets(["C61", "I10", "N18.4", "SEX_M"], ["SEX_F"], [])
    scores = code_set_scores(predicted, true)
    # Victim 0: P = 2/3, R = 2/4, F1 = 4/7. Victim 1: all 1. Victim 2: empty vs empty = 1.
    assert scores["precision"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert scores["recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert scores["f1"] == pytest.approx((4 / 7 + 1 + 1) / 3)
    nothing = code_set_scores(_sets([]), _sets(["C61"]))
    assert nothing == {"precision": 1.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="predicted and true"):
        code_set_scores(predicted, true[:2])


def test_count_accuracy_by_hand():
    true = np.array([[0, 2, 1, 0], [0, 1, 0, 3]])
    predicted = np.array([[5, 2, 1, 0], [0, 2, 0, 3]])  # padding column ignored
    scores = count_accuracy(predicted, true)
    assert scores["token_accuracy"] == pytest.approx(3 / 4)
    assert scores["exact_records"] == pytest.approx(1 / 2)


def test_hierarchical_match_by_hand():
    true = _sets(["C50.911", "E11.22", "SEX_F"])
    # C50.912: same category as C50.911; E11.9: same category as E11.22; E10.9: block E08-E13;
    # E66.9: chapter 4 only; I10: nothing; SEX_F: exact; SEX_M: non-code, no partial credit.
    predicted = _sets(["C50.911", "C50.912", "E11.9", "E10.9", "E66.9", "I10", "SEX_F", "SEX_M"])
    scores = hierarchical_match(predicted, true)
    assert scores["code"] == pytest.approx(2 / 8)
    assert scores["category"] == pytest.approx(4 / 8)
    assert scores["block"] == pytest.approx(5 / 8)
    assert scores["chapter"] == pytest.approx(6 / 8)
    assert scores["score"] == pytest.approx((1 + 0.75 + 0.75 + 0.5 + 0.25 + 0 + 1 + 0) / 8)
    assert hierarchical_match(_sets([]), true)["score"] == 0.0


def test_subtype_identification():
    recovered = _sets(["C50.911", "SEX_F"], ["C61", "C34.90", "C34.91"], ["E11.9"], ["C67.9"])
    np.testing.assert_array_equal(implied_subtypes(recovered), [0, 1, -1, 7])
    labels = [icd10.SUBTYPE_NAMES.index(s) for s in ("breast", "prostate", "lung", "bladder")]
    assert subtype_accuracy(recovered, labels) == pytest.approx(2 / 4)
    # Counts weigh codes: three prostate occurrences beat two lung codes.
    counts = recovered.astype(np.int32)
    counts[1, VOCABULARY.id("C61")] = 3
    assert implied_subtypes(counts)[1] == icd10.SUBTYPE_NAMES.index("prostate")
