"""Every true record is scored: empty, partial and surplus reconstructions (issue #10)."""

import numpy as np
import pytest

from fedpriv.metrics import RECOGNISABLE_SSIM, assign_records, psnr, score_image_records
from fedpriv.metrics.record_scores import PSNR_CAP_DB, score_guess, summarise


def _records(count, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, 8, 8, 1)).astype(np.float32)


def test_exact_reconstructions_in_any_order_score_the_cap():
    truth = _records(3)
    scored = score_image_records(truth[[2, 0, 1]], truth)
    assert scored.matching == "assignment" and scored.missing == 0 and scored.surplus == 0
    np.testing.assert_array_equal(scored.truth_index, [2, 0, 1])
    np.testing.assert_allclose(scored.psnr_db, PSNR_CAP_DB)
    np.testing.assert_allclose(scored.ssim, 1.0, atol=1e-5)


def test_empty_reconstruction_scores_every_record_as_the_blank_guess():
    truth = _records(2)
    scored = score_image_records(np.zeros((0, 8, 8, 1), np.float32), truth)
    assert scored.missing == 2 and len(scored.psnr_db) == 2
    blank = np.full_like(truth, 0.5)
    np.testing.assert_allclose(scored.psnr_db, np.asarray(psnr(blank, truth)), rtol=1e-6)
    assert summarise(scored.psnr_db, scored.ssim)["recognisable_share"] == 0.0


def test_a_non_finite_candidate_is_no_reconstruction():
    truth = _records(2)
    reconstructed = np.stack([truth[1], np.full_like(truth[0], np.nan)])
    scored = score_image_records(reconstructed, truth)
    assert scored.missing == 1 and scored.psnr_db[0] == PSNR_CAP_DB and scored.psnr_db[1] < 20


def test_partial_reconstruction_is_lowered_by_the_missing_record():
    truth = _records(4)
    partial = score_image_records(truth[:2], truth)
    assert partial.missing == 2 and len(partial.psnr_db) == 4
    summary = summarise(partial.psnr_db, partial.ssim)
    # Two exact and two blank: the mean is far below the cap; half are recognisable.
    assert summary["psnr_db"] < 0.6 * PSNR_CAP_DB and summary["recognisable_share"] == 0.5


def test_surplus_is_not_picked_with_the_ground_truth():
    truth = _records(2)
    noise = _records(6, seed=1)
    scored = score_image_records(np.concatenate([noise, truth]), truth)
    # Picking the best 2 of 8 with the truth would report two exact copies; every
    # reconstruction is scored instead, so 6 of 8 pairs are the noise images.
    assert scored.matching == "nearest" and scored.surplus == 6 and len(scored.psnr_db) == 8
    assert np.sum(scored.psnr_db == PSNR_CAP_DB) == 2
    assert summarise(scored.psnr_db, scored.ssim)["recognisable_share"] == pytest.approx(2 / 8)


def test_surplus_leaves_unmatched_records_missing():
    truth = _records(3)
    reconstructed = np.stack([truth[0] + shift for shift in (0.0, 0.01, -0.01, 0.02)])
    scored = score_image_records(np.clip(reconstructed, 0, 1), truth)
    # All four are nearest to record 0: four scored pairs and two records missing.
    assert scored.matching == "nearest" and scored.missing == 2 and len(scored.psnr_db) == 6
    np.testing.assert_array_equal(scored.truth_index, [0, 0, 0, 0])


def test_assign_records_is_an_assignment_when_reconstructions_are_fewer():
    costs = np.array([[0.0, 1.0, 5.0], [0.1, 5.0, 5.0]])
    assignment = assign_records(costs)
    # Nearest neighbours would give both rows record 0; the assignment gives the cheaper total.
    assert sorted(zip(assignment.reconstruction_index, assignment.truth_index)) == [(0, 1), (1, 0)]
    assert assignment.missing.tolist() == [2]


def test_recognisable_threshold_is_the_stated_one():
    assert RECOGNISABLE_SSIM == 0.6
    assert summarise(np.array([30.0, 10.0]), np.array([0.6, 0.59]))["recognisable_share"] == 0.5


def test_a_guess_is_scored_against_every_record():
    truth = _records(3)
    psnr_db, ssim_values = score_guess(truth[1], truth)
    assert psnr_db[1] == PSNR_CAP_DB and ssim_values[1] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(psnr_db[[0, 2]], np.asarray(psnr(np.stack([truth[1]] * 2), truth[[0, 2]])), rtol=1e-6)
    with pytest.raises(ValueError, match="must have the records' shape"):
        score_guess(truth[1, :4], truth)
