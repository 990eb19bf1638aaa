"""Re-identification rate against exact copies and a hand-built case."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fedpriv.metrics.reidentification as reidentification_module
from fedpriv.metrics import reidentification_rate


def test_exact_copies_are_all_reidentified():
    rng = np.random.default_rng(0)
    records = rng.uniform(size=(20, 8, 8, 1)).astype(np.float32)
    ids = np.arange(100, 120)
    chosen = rng.choice(20, size=6, replace=False)
    assert reidentification_rate(records[chosen], ids[chosen], records, ids) == 1.0


def test_hand_built_case():
    # Four records on the corners of a square (ids 40..43), one pixel each side.
    records = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], np.float32)
    ids = np.array([40, 41, 42, 43])
    reconstructed = np.array([
        [0.1, 0.1],  # from 40, nearest 40: hit
        [0.2, 0.7],  # from 41, nearest 41: hit
        [0.9, 0.8],  # from 42, nearest 43: miss
        [0.5, 0.5],  # padding (-1): ignored
        [0.0, 0.9],  # from 99, not in the hospital: miss
    ], np.float32)
    true_ids = np.array([40, 41, 42, -1, 99])
    assert reidentification_rate(reconstructed, true_ids, records, ids) == pytest.approx(2 / 4)


def test_errors():
    records = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="true_record_ids"):
        reidentification_rate(records, [1, 2], records, [1, 2, 3])
    with pytest.raises(ValueError, match="hospital_record_ids"):
        reidentification_rate(records, [1, 2, 3], records, [1, 2])
    with pytest.raises(ValueError, match="padding"):
        reidentification_rate(records, [-1, -1, -1], records, [1, 2, 3])


def test_docstring_examples():
    result = doctest.testmod(reidentification_module)
    assert result.attempted > 0 and result.failed == 0
