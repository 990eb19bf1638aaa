"""Exact ROC curves: AUC == Mann-Whitney U, TPR at FPR == a brute-force threshold loop.

References:
  Mann, Whitney. "On a test of whether one of two random variables is stochastically
  larger than the other", Ann. Math. Statist. 1947 (AUC = U / (n1 * n0), ties count 1/2).
  Carlini et al. 2022, arXiv:2112.03570 (TPR at low FPR, log-log ROC plots).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedpriv.metrics.roc import auc, plot_roc, roc_curve, tpr_at_fpr


def _scores_with_ties(rng, n, levels):
    """Members score one level higher on average; few levels -> many ties."""
    is_member = rng.random(n) < 0.4
    is_member[:2] = [True, False]
    scores = rng.integers(0, levels, size=n) + is_member * rng.integers(0, 2, size=n)
    return scores.astype(np.float64), is_member


def _brute_force_tpr_at_fpr(scores, is_member, target):
    best = 0.0
    for threshold in np.r_[np.inf, np.unique(scores)]:
        predicted = scores >= threshold
        fpr = np.mean(predicted[~is_member])
        if fpr <= target:
            best = max(best, np.mean(predicted[is_member]))
    return best


def test_hand_computed_curve_with_a_tie():
    # 0.5 is shared by a member and a non-member: one diagonal step from (0, .5) to (.5, 1).
    fpr, tpr, thresholds = roc_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    # Area: 0.5 * (0.5 + 1) / 2 + 0.5 * 1 = 0.875 = (3 wins + 0.5 tie) / 4 pairs.
    assert auc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875, abs=1e-15)


@pytest.mark.parametrize("seed,levels", [(0, 3), (1, 10), (2, 1000), (3, 2)])
def test_auc_equals_mann_whitney_u(seed, levels):
    rng = np.random.default_rng(seed)
    scores, is_member = _scores_with_ties(rng, 300, levels)
    members, non_members = scores[is_member], scores[~is_member]
    u_statistic = stats.mannwhitneyu(members, non_members, alternative="two-sided").statistic
    expected = u_statistic / (members.size * non_members.size)
    assert auc(scores, is_member) == pytest.approx(expected, abs=1e-12)


def test_auc_extremes_and_sign():
    scores = np.arange(10.0)
    is_member = scores >= 5
    assert auc(scores, is_member) == 1.0
    assert auc(-scores, is_member) == 0.0
    assert auc(np.zeros(10), is_member) == 0.5  # one tie for everyone: the chance diagonal


@pytest.mark.parametrize("seed,levels", [(0, 4), (1, 25), (2, 100000)])
def test_tpr_at_fpr_equals_brute_force_threshold_loop(seed, levels):
    rng = np.random.default_rng(seed)
    scores, is_member = _scores_with_ties(rng, 400, levels)
    non_members = int(np.sum(~is_member))
    # Targets on and next to the achievable FPR grid k / n0, where <= vs < would differ.
    targets = [0.001, 0.01, 0.1, 0.5, 0.999, 3 / non_members, 3 / non_members - 1e-12, 17 / non_members]
    results = tpr_at_fpr(scores, is_member, targets)
    assert results.shape == (len(targets),)
    for target, result in zip(targets, results):
        assert result == _brute_force_tpr_at_fpr(scores, is_member, target)
        assert tpr_at_fpr(scores, is_member, target) == result  # scalar form: a Python float
    assert isinstance(tpr_at_fpr(scores, is_member, 0.1), float)


def test_tpr_at_fpr_counts_ties_together():
    # A member and a non-member tie at the top: taking the member alone would need a
    # randomised threshold, so at any FPR below 1/2 the TPR is 0, not 1/2 (an
    # interpolating implementation would report 0.49).
    scores = [5.0, 5.0, 1.0, 0.0]
    is_member = [True, False, True, False]
    assert tpr_at_fpr(scores, is_member, 0.49) == 0.0
    assert tpr_at_fpr(scores, is_member, 0.5) == 1.0  # threshold 1.0: both members, one non-member


def test_infinite_scores_stay_one_tie_group():
    scores = [np.inf, np.inf, 0.0, -np.inf, -np.inf]
    is_member = [True, False, True, False, True]
    fpr, tpr, thresholds = roc_curve(scores, is_member)
    np.testing.assert_array_equal(thresholds, [np.inf, np.inf, 0.0, -np.inf])
    np.testing.assert_allclose(fpr, [0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1.0])


def test_curve_is_monotone_and_spans_the_square():
    rng = np.random.default_rng(5)
    scores, is_member = _scores_with_ties(rng, 500, 50)
    fpr, tpr, thresholds = roc_curve(scores, is_member)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    assert thresholds.size == np.unique(scores).size + 1


@pytest.mark.parametrize("bad_fpr", [0.0, 1.0, -0.1, 1.5, float("nan"), True, [0.1, 0.0], "0.1x", []])
def test_fpr_outside_the_open_unit_interval_is_refused(bad_fpr):
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0, 0.0], [True, False], bad_fpr)


def test_bad_scores_and_labels_are_refused():
    with pytest.raises(ValueError, match="is_member"):
        roc_curve([1.0, 2.0, 3.0], [True, False])
    with pytest.raises(ValueError, match="is_member"):
        roc_curve([1.0, 2.0], [True, True])  # no non-member
    with pytest.raises(ValueError, match="is_member"):
        roc_curve([1.0, 2.0], [0, 2])
    with pytest.raises(ValueError, match="scores"):
        auc([1.0, float("nan")], [True, False])
    with pytest.raises(ValueError, match="scores"):
        auc([[1.0, 0.0]], [[True, False]])


def test_plot_roc_writes_a_log_log_png(tmp_path):
    rng = np.random.default_rng(0)
    is_member = rng.random(400) < 0.5
    strong = rng.normal(size=400) + 2.0 * is_member
    weak = rng.normal(size=400) + 0.3 * is_member
    curves = {name: roc_curve(s, is_member)[:2] for name, s in (("strong", strong), ("weak", weak))}
    path = plot_roc(curves, tmp_path / "roc.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="curves"):
        plot_roc({}, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="curves"):
        plot_roc({"bad": ([0.0, 1.0], [0.0, 0.5, 1.0])}, tmp_path / "bad.png")
