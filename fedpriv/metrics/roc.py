"""ROC analysis of membership inference: exact curves, AUC, TPR at a low FPR, log-log plots.

Scores come from an attack (``fedpriv.attacks.membership``), higher meaning "more likely
a member"; ``is_member`` is the ground truth, which only this layer sees. A threshold
``t`` predicts "member" for ``score >= t``; the curve walks every distinct score, so
tied scores enter together (one step, possibly diagonal) and the curve is exact, with no
interpolation and no binning.

Carlini et al. argue that membership inference must be judged by its true-positive
rate at a LOW false-positive rate (0.1 %, 0.01 %), on log-log axes: an attack that
confidently identifies a few members is a privacy breach even if its AUC is near 0.5,
and an AUC can be high from many unconfident guesses.

References:
  Carlini, Chien, Nasr, Song, Terzis, Tramèr. "Membership Inference Attacks From First
  Principles", IEEE S&P 2022, arXiv:2112.03570 (TPR at low FPR).
  Fawcett. "An introduction to ROC analysis", Pattern Recognition Letters 27, 2006
  (exact ROC curves with ties, AUC as the Mann-Whitney statistic).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.stats


def _check_scores(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(is_member)
    if scores.ndim != 1 or scores.shape[0] < 2:
        raise ValueError(f"scores must have shape [N >= 2], got {scores.shape}")
    if members.shape != scores.shape:
        raise ValueError(f"is_member must have shape {list(scores.shape)} like scores, got {members.shape}")
    if members.dtype != bool:
        if not np.all((members == 0) | (members == 1)):
            raise ValueError(f"is_member must be boolean (or 0/1), got values {np.unique(members)[:5].tolist()}")
        members = members.astype(bool)
    if np.any(np.isnan(scores)):
        raise ValueError(f"scores must not be NaN, got {int(np.sum(np.isnan(scores)))} NaN value(s)")
    num_members = int(members.sum())
    if num_members == 0 or num_members == members.size:
        raise ValueError(f"is_member must hold at least one member and one non-member, got {num_members} "
                         f"member(s) out of {members.size}")
    return scores, members


def roc_curve(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC curve of a scoring attack.

    Args:
      scores: ``[N]`` scores, higher = more likely a member (``+-inf`` allowed, NaN not).
      is_member: ``[N]`` bool (or 0/1) ground truth, with at least one of each.

    Returns:
      ``(fpr, tpr, thresholds)``, each ``[K + 1]`` for ``K`` distinct scores: point
      ``k`` is the rates of the rule ``score >= thresholds[k]``; point 0 is
      ``(0, 0)`` at threshold ``+inf`` (predict nobody) and the last is ``(1, 1)``.
      ``fpr`` and ``tpr`` are non-decreasing; thresholds strictly decreasing.

    Raises:
      ValueError: for mismatched shapes, NaN scores, or a one-class ``is_member``.

    Example:
      >>> fpr, tpr, thresholds = roc_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
      >>> fpr.tolist(), tpr.tolist()
      ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    scores, members = _check_scores(scores, is_member)
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    ordered_members = members[order]
    true_positives = np.cumsum(ordered_members)
    false_positives = np.cumsum(~ordered_members)
    # Last position of every run of equal scores: ties cross the threshold together.
    # (!= rather than diff, so runs of +inf or -inf stay one run.)
    run_ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1]
    tpr = np.r_[0.0, true_positives[run_ends] / true_positives[-1]]
    fpr = np.r_[0.0, false_positives[run_ends] / false_positives[-1]]
    thresholds = np.r_[np.inf, ordered[run_ends]]
    return fpr, tpr, thresholds


def auc(scores, is_member) -> float:
    """Area under the exact ROC curve (trapezoids, so ties count one half).

    Equals the Mann-Whitney statistic ``U / (n_members * n_non_members)``:
    ``Pr[S_member > S_non_member] + Pr[S_member = S_non_member] / 2``.

    Args:
      scores: ``[N]`` scores, higher = more likely a member.
      is_member: ``[N]`` bool ground truth.

    Returns:
      A Python float in ``[0, 1]`` (0.5 is chance).

    Raises:
      ValueError: as :func:`roc_curve`.
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    return _trapezoid(fpr, tpr)


def _trapezoid(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(scores, is_member, fpr: float | Sequence[float]) -> float | np.ndarray:
    """The best true-positive rate of any threshold whose false-positive rate is ``<= fpr``.

    Interpolation-free: the maximum TPR over the exact ROC points with FPR at most the
    target (a threshold, never a randomised mix of two). With ``n`` non-members, an FPR
    below ``1 / n`` allows no false positive at all, so report TPR at 0.1 % only with
    well over 1000 non-members.

    Args:
      scores: ``[N]`` scores, higher = more likely a member.
      is_member: ``[N]`` bool ground truth.
      fpr: a target false-positive rate in the open interval (0, 1), or a sequence of them.

    Returns:
      A Python float for a scalar ``fpr``, else a float64 array like ``fpr``.

    Raises:
      ValueError: if a target is not in (0, 1), or as :func:`roc_curve`.

    Example:
      >>> tpr_at_fpr([4, 3, 2, 1], [True, False, True, False], 0.5)
      1.0
      >>> tpr_at_fpr([4, 3, 2, 1], [True, False, True, False], [0.1, 0.5])
      array([0.5, 1. ])
    """
    try:
        targets = None if isinstance(fpr, bool) else np.asarray(fpr, dtype=np.float64)
    except (TypeError, ValueError):
        targets = None
    if targets is None or targets.ndim > 1 or targets.size == 0 or not np.all((targets > 0) & (targets < 1)):
        raise ValueError(f"fpr must be a number in the open interval (0, 1) or a sequence of them, got {fpr!r}")
    curve_fpr, curve_tpr, _ = roc_curve(scores, is_member)
    # The curve's TPR is non-decreasing in its FPR, so the best point under a target is
    # the last one with FPR <= target (point 0, (0, 0), always qualifies).
    last = np.searchsorted(curve_fpr, targets, side="right") - 1
    result = curve_tpr[last]
    return float(result) if targets.ndim == 0 else result


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
             title: str | None = None, min_rate: float | None = None) -> Path:
    """Draws ROC curves on log-log axes (as Carlini et al.) and saves the figure.

    Uses Matplotlib's Agg canvas directly (no ``pyplot``, no global figure state), so it
    is safe in tests and headless jobs. The legend gives each curve's AUC.

    Args:
      curves: ``{name: (fpr, tpr)}``, e.g. the first two outputs of :func:`roc_curve`.
      path: where to save; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
      title: optional title.
      min_rate: the lower limit of both axes; default the smallest positive FPR of any
        curve (points at 0 cannot be drawn on a log axis), at most 1e-3.

    Returns:
      The path written.

    Raises:
      ValueError: for no curves, or a curve whose rates are not two equal-length 1-D
        sequences in [0, 1].
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"curves must be a non-empty mapping name -> (fpr, tpr), got {curves!r}")
    checked = {}
    for name, rates in curves.items():
        try:
            fpr, tpr = (np.asarray(r, dtype=np.float64) for r in rates)
        except (TypeError, ValueError):
            raise ValueError(f"curves[{name!r}] must be a pair (fpr, tpr), got {rates!r}") from None
        if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size < 2:
            raise ValueError(f"curves[{name!r}] must hold two 1-D arrays of the same length >= 2, "
                             f"got shapes {fpr.shape} and {tpr.shape}")
        if not (np.all((fpr >= 0) & (fpr <= 1)) and np.all((tpr >= 0) & (tpr <= 1))):
            raise ValueError(f"curves[{name!r}] rates must lie in [0, 1]")
        checked[name] = (fpr, tpr)
    if min_rate is None:
        positive = [f[f > 0].min() for f, _ in checked.values() if np.any(f > 0)]
        min_rate = min([1e-3, *positive])
    if isinstance(min_rate, bool) or not isinstance(min_rate, numbers.Real) or not 0 < min_rate < 1:
        raise ValueError(f"min_rate must be a number in (0, 1), got {min_rate!r}")

    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, (fpr, tpr) in checked.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC {_trapezoid(fpr, tpr):.3f})")
    axes.plot([min_rate, 1.0], [min_rate, 1.0], linestyle="--", color="gray", linewidth=0.8, label="chance")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(min_rate, 1.0)
    axes.set_ylim(min_rate, 1.0)
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    if title:
        axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    path = Path(path)
    figure.savefig(path, dpi=150)
    return path



def auc_confidence_interval(scores, is_member, confidence: float = 0.95) -> tuple[float, float]:
    """A normal confidence interval for the AUC with DeLong's variance.

    The AUC is the Mann-Whitney statistic; DeLong et al. estimate its variance from the
    structural components ``V10_i`` (the share of non-members member ``i`` outscores, ties
    half) and ``V01_j`` (the share of members that outscore non-member ``j``):
    ``var = s^2(V10) / n_members + s^2(V01) / n_non_members``. The interval is clipped to [0, 1].

    Args:
      scores: ``[N]`` scores, higher = more likely a member.
      is_member: ``[N]`` bool ground truth, both classes present (each at least twice).
      confidence: in (0, 1).

    Returns:
      ``(low, high)``.

    Raises:
      ValueError: as :func:`roc_curve`, or a class with fewer than 2 records, or a bad confidence.

    References:
      DeLong, DeLong, Clarke-Pearson 1988, "Comparing the areas under two or more correlated
      receiver operating characteristic curves", Biometrics 44(3).
    """
    scores, is_member = _check_scores(scores, is_member)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    positives, negatives = scores[is_member], scores[~is_member]
    if positives.size < 2 or negatives.size < 2:
        raise ValueError(f"an AUC interval needs at least 2 members and 2 non-members, got {positives.size} and "
                         f"{negatives.size}")
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    area = float(wins.mean())
    variance = wins.mean(axis=1).var(ddof=1) / positives.size + wins.mean(axis=0).var(ddof=1) / negatives.size
    half_width = float(scipy.stats.norm.ppf(0.5 + confidence / 2) * np.sqrt(variance))
    return max(0.0, area - half_width), min(1.0, area + half_width)
