"""Empirical differential-privacy auditing: lower bounds on epsilon from attack outcomes.

An accountant (:mod:`fedpriv.privacy.accountant`) gives an UPPER bound on epsilon that
holds if the code does what the plan says. An audit gives a LOWER bound that holds,
with a stated confidence, whatever the code does: it runs the mechanism on neighbouring
inputs (canary present / absent), scores what the mechanism released, and turns the
measured error rates of a membership test into an epsilon no ``(epsilon, delta)``-DP
mechanism could exceed except with small probability. A lower bound above the
accountant's epsilon means the implementation (or its analysis) is wrong; a lower bound
far below it says nothing about the guarantee (a weak test is always possible).

Three estimators, each returning an :class:`AuditResult`:

- :func:`clopper_pearson_audit`: many independent trials with and without the canary;
  Clopper-Pearson upper bounds on the false positive and false negative rates of the
  best threshold test, then the (epsilon, delta) hypothesis-testing inequalities.
- :func:`fedpriv.privacy.auditing_gaussian_dp.gaussian_dp_audit`: the same error-rate upper bounds, read as a lower bound on
  the Gaussian-DP parameter mu and converted to epsilon (valid only for mechanisms whose
  trade-off curve is Gaussian, such as one full-batch DP-SGD step).
- :func:`fedpriv.privacy.auditing_one_run.one_run_audit`: one run with many canaries, each inserted with probability 1/2
  (Steinke, Nasr, Jagielski 2023).

Canaries and scores (the experiments that feed these estimators) are in
:mod:`fedpriv.privacy.canaries`. Everything here is host-side NumPy/SciPy, like the
accountants.

Threshold choice (Clopper-Pearson and Gaussian-DP estimators), ``threshold_selection``:

- ``"search"`` (default): the test "score >= t means present" is tried at every
  observed score t and the best t is reported, with the confidence of ONE pre-chosen
  threshold. This is what Jagielski et al. 2020 and Nasr et al. 2021 do, and what
  reproduces the reference caps (shared/reference/README.md) from N trials per side.
  But the search is a multiple comparison and the stated confidence is optimistic, more
  so as N grows. Measured (alpha = 0.05): on null scores (present and absent both
  N(0, 1), delta = 0) a positive bound in 3.6 % / 7.1 % / 14.3 % of seeds for N = 100 /
  1000 / 10000 per side (2000 / 2000 / 400 seeds), against the nominal 5 %; on one
  Gaussian release (mu = 1) the Gaussian-DP estimator's ``mu_lower_bound`` exceeded the
  true mu in 2.8 % / 8.75 % / 20 % of seeds.
- ``"split"``: the threshold is searched on the first half of each side's trials (in
  the order given: pass them in run order, never sorted) and evaluated on the second
  half only, so the stated confidence holds, conservatively (same measurements: 0 % /
  0 % / 0 % null positives; mu exceeded in 0.15 % / 0.2 % / 1.25 %), at the cost of half
  the trials (cap of N/2 per side).
- a fixed ``threshold`` chosen before the trials (e.g. ``details["threshold"]`` of an
  audit of earlier, independent trials): exact confidence on all trials.

Use ``"split"`` or a fixed threshold for a claim ("the implementation violates its
epsilon"); ``"search"`` for exploration and for comparison with the literature.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

METHODS: tuple[str, ...] = ("clopper_pearson", "gaussian_dp", "one_run")
THRESHOLD_SELECTIONS: tuple[str, ...] = ("search", "split", "fixed", "top_k")


# -- argument checks (host-side, before any compute) --------------------------------------

def _check_alpha(alpha: object) -> float:
    allowed = "a number in the open interval (0, 1) (1 - confidence)"
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be {allowed}, got {alpha!r}")
    return float(alpha)


def _check_audit_delta(delta: object, *, allow_zero: bool = True) -> float:
    allowed = "a number in the half-open interval [0, 1)" if allow_zero else "a number in the open interval (0, 1)"
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise ValueError(f"delta must be {allowed}, got {delta!r}")
    value = float(delta)
    if not (0.0 <= value < 1.0) or (value == 0.0 and not allow_zero):
        raise ValueError(f"delta must be {allowed}, got {delta!r}")
    return value


def _check_count(value: object, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_scores(scores: object, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(array)))} non-finite values")
    return array


def _check_threshold(threshold: object) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be None (search) or a finite number, got {threshold!r}")
    return float(threshold)


# -- the result -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditResult:
    """One empirical lower bound on epsilon, with what it was computed from.

    Attributes:
      method: ``"clopper_pearson"``, ``"gaussian_dp"`` or ``"one_run"``.
      epsilon_lower_bound: the certified lower bound, ``>= 0`` (0: nothing certified).
      delta: the delta the bound is stated at, in [0, 1).
      confidence: ``1 - alpha``, the probability over the audit's randomness that the
        bound holds (see the estimator for caveats, e.g. threshold search).
      num_trials_present: trials (or canaries) with the canary present / included.
      num_trials_absent: trials (or canaries) with the canary absent / excluded.
      threshold_selection: ``"search"`` (best observed threshold), ``"split"`` (chosen
        on half the trials, evaluated on the rest), ``"fixed"`` (given in advance) or
        ``"top_k"`` (one-run guesses on the k highest/lowest scores).
      details: method-specific numbers (error rates, their upper bounds, threshold, mu,
        guesses...), read-only.

    Raises:
      ValueError: on construction, if a field is outside its allowed range (the message
        names the field, the value and what is allowed).

    **Formal guarantees**

    - Bound: with probability at least :attr:`confidence` over the audit's trials, the
      audited mechanism is NOT ``(epsilon, delta)``-DP for any epsilon below
      :attr:`epsilon_lower_bound` (under the estimator's assumptions).
    - Relation and unit: those of the canary experiment (add/remove-one canary).
    - Not shown: that the mechanism IS private at any epsilon (an audit only refutes),
      nor anything about inputs, units or attacks other than the ones tested.
    """

    method: str
    epsilon_lower_bound: float
    delta: float
    confidence: float
    num_trials_present: int
    num_trials_absent: int
    threshold_selection: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        value = self.epsilon_lower_bound
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) < math.inf):
            raise ValueError(f"epsilon_lower_bound must be a finite number >= 0, got {value!r}")
        object.__setattr__(self, "epsilon_lower_bound", float(value))
        object.__setattr__(self, "delta", _check_audit_delta(self.delta))
        confidence = self.confidence
        if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in the open interval (0, 1), got {confidence!r}")
        object.__setattr__(self, "confidence", float(confidence))
        object.__setattr__(self, "num_trials_present", _check_count(self.num_trials_present, "num_trials_present"))
        object.__setattr__(self, "num_trials_absent", _check_count(self.num_trials_absent, "num_trials_absent"))
        if self.threshold_selection not in THRESHOLD_SELECTIONS:
            raise ValueError(f"threshold_selection must be one of {THRESHOLD_SELECTIONS}, "
                             f"got {self.threshold_selection!r}")
        if not isinstance(self.details, Mapping):
            raise ValueError(f"details must be a mapping, got {type(self.details).__name__}")
        object.__setattr__(self, "details", types.MappingProxyType(dict(self.details)))


# -- Clopper-Pearson ------------------------------------------------------------------------

def clopper_pearson_upper(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """Upper end of the two-sided ``(1 - alpha)`` Clopper-Pearson interval of a proportion.

    ``Beta.ppf(1 - alpha / 2, k + 1, n - k)`` for ``k < n`` and 1 for ``k = n``: the
    true proportion exceeds it with probability at most ``alpha / 2``.

    Args:
      successes: observed counts ``k`` (scalar or array), ``0 <= k <= trials``.
      trials: number of trials ``n >= 1``.
      alpha: ``1 -`` the two-sided confidence, in (0, 1).

    Returns:
      The upper bounds, as a float64 array shaped like ``successes``.

    Raises:
      ValueError: if ``trials < 1``, ``alpha`` is outside (0, 1) or a count is outside
        ``[0, trials]``.

    References:
      Clopper, Pearson 1934, "The use of confidence or fiducial limits illustrated in the
      case of the binomial", Biometrika 26(4).
    """
    trials = _check_count(trials, "trials", minimum=1)
    alpha = _check_alpha(alpha)
    k = np.asarray(successes)
    if not np.issubdtype(k.dtype, np.integer) or np.any(k < 0) or np.any(k > trials):
        raise ValueError(f"successes must be integers in [0, trials={trials}], got {successes!r}")
    upper = np.ones(k.shape, dtype=np.float64)
    inside = k < trials
    upper[inside] = stats.beta.ppf(1.0 - alpha / 2.0, k[inside] + 1, trials - k[inside])
    return upper


def _epsilon_from_rate_bounds(fpr_upper: np.ndarray, fnr_upper: np.ndarray, delta: float) -> np.ndarray:
    # (eps, delta)-DP implies FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta
    # for every test (Kairouz, Oh, Viswanath 2015); the bounds keep both directions.
    with np.errstate(divide="ignore"):
        forward = np.log(np.maximum(1.0 - delta - fnr_upper, 0.0)) - np.log(fpr_upper)
        backward = np.log(np.maximum(1.0 - delta - fpr_upper, 0.0)) - np.log(fnr_upper)
    return np.maximum(np.maximum(forward, backward), 0.0)


def clopper_pearson_epsilon(*, false_positives: int, num_absent: int, false_negatives: int, num_present: int,
                            alpha: float = 0.05, delta: float = 0.0) -> float:
    """Epsilon lower bound of ONE test from its error counts (no threshold search).

    ``max(ln((1 - delta - FNR_ub) / FPR_ub), ln((1 - delta - FPR_ub) / FNR_ub), 0)`` with
    ``FPR_ub``, ``FNR_ub`` the upper ends of two-sided ``(1 - alpha)`` Clopper-Pearson
    intervals. With no errors and N trials per side, ``delta = 0``, ``alpha = 0.05``, this
    is the cap ``ln(a / (1 - a))``, ``a = 0.025^(1/N)``: 3.2813 (N = 100), 5.6006
    (N = 1000), 7.9048 (N = 10000).

    Args:
      false_positives: absent-canary trials the test called present, in [0, num_absent].
      num_absent: absent-canary trials, ``>= 1``.
      false_negatives: present-canary trials the test called absent, in [0, num_present].
      num_present: present-canary trials, ``>= 1``.
      alpha: 1 - confidence, in (0, 1).
      delta: the delta the bound is stated at, in [0, 1).

    Returns:
      The epsilon lower bound, ``>= 0``.

    Raises:
      ValueError: if an argument is outside its range (before any compute).

    **Formal guarantees**

    - Bound: if the test was fixed before the trials were run and the trials are
      independent, then with probability ``>= 1 - alpha`` the mechanism is not
      ``(epsilon, delta)``-DP for any epsilon below the result (each rate bound fails
      with probability ``<= alpha / 2``; union bound).
    - Relation and unit: those of the canary (add/remove-one).
    - Not shown: any upper bound; tightness (a weak test gives a small bound).

    References:
      Jagielski, Ullman, Oprea 2020, "Auditing Differentially Private Machine Learning:
      How Private is Private SGD?", arXiv 2006.07709.
      Nasr, Song, Thakurta, Papernot, Carlini 2021, "Adversary Instantiation: Lower
      Bounds for Differentially Private Machine Learning", arXiv 2101.04535.

    Example:
      >>> round(clopper_pearson_epsilon(false_positives=0, num_absent=1000, false_negatives=0,
      ...                               num_present=1000), 4)
      5.6006
    """
    num_absent = _check_count(num_absent, "num_absent", minimum=1)
    num_present = _check_count(num_present, "num_present", minimum=1)
    false_positives = _check_count(false_positives, "false_positives")
    false_negatives = _check_count(false_negatives, "false_negatives")
    if false_positives > num_absent:
        raise ValueError(f"false_positives must be in [0, num_absent={num_absent}], got {false_positives}")
    if false_negatives > num_present:
        raise ValueError(f"false_negatives must be in [0, num_present={num_present}], got {false_negatives}")
    alpha = _check_alpha(alpha)
    delta = _check_audit_delta(delta)
    fpr_upper = clopper_pearson_upper(np.array([false_positives]), num_absent, alpha)
    fnr_upper = clopper_pearson_upper(np.array([false_negatives]), num_present, alpha)
    return float(_epsilon_from_rate_bounds(fpr_upper, fnr_upper, delta)[0])


def max_certifiable_epsilon(*, num_present: int, num_absent: int, alpha: float = 0.05, delta: float = 0.0) -> float:
    """The Clopper-Pearson cap: the bound of a perfect test (no errors) on these many trials.

    No audit with these trial counts can certify more, whatever the mechanism; 0 means
    the trials are too few for any bound.

    Raises:
      ValueError: if an argument is outside its range.
    """
    return clopper_pearson_epsilon(false_positives=0, num_absent=num_absent, false_negatives=0,
                                   num_present=num_present, alpha=alpha, delta=delta)


def _threshold_error_counts(present: np.ndarray, absent: np.ndarray,
                            thresholds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds t (test: score >= t means present; every observed score if None) and their FP/FN counts."""
    if thresholds is None:
        thresholds = np.unique(np.concatenate([present, absent]))
    false_negatives = np.searchsorted(np.sort(present), thresholds, side="left")
    false_positives = absent.size - np.searchsorted(np.sort(absent), thresholds, side="left")
    return thresholds, false_positives, false_negatives


def _check_trials(present_scores, absent_scores, alpha, delta, threshold, threshold_selection, *,
                  allow_zero_delta=True):
    # Every argument is checked before the first score is compared.
    present = _check_scores(present_scores, "present_scores")
    absent = _check_scores(absent_scores, "absent_scores")
    alpha = _check_alpha(alpha)
    delta = _check_audit_delta(delta, allow_zero=allow_zero_delta)
    threshold = _check_threshold(threshold)
    if threshold_selection not in ("search", "split"):
        raise ValueError(f"threshold_selection must be one of ('search', 'split'), got {threshold_selection!r}")
    if threshold is not None:
        threshold_selection = "fixed"
    if threshold_selection == "split" and min(present.size, absent.size) < 2:
        raise ValueError(f"present_scores/absent_scores need >= 2 trials each for threshold_selection='split', "
                         f"got {present.size}/{absent.size}")
    return present, absent, alpha, delta, threshold, threshold_selection


def _too_few_trials(num_present: int, num_absent: int, alpha: float, delta: float, what: str,
                    selection: str) -> ValueError:
    # Smallest N per side whose perfect separation certifies a positive bound:
    # 2 (alpha/2)^(1/N) > 1 + delta (twice that with a split).
    needed = math.floor(math.log(alpha / 2.0) / math.log((1.0 + delta) / 2.0)) + 1
    if selection == "split":
        needed *= 2
    return ValueError(
        f"present_scores/absent_scores have {num_present}/{num_absent} trials evaluated (threshold_selection="
        f"{selection!r}): even a perfect separation certifies no positive {what} at alpha={alpha}, delta={delta}; "
        f"use at least {needed} trials per side")


def _rate_bound_audit(present, absent, alpha, threshold, selection, criterion):
    """Picks the threshold by ``selection`` and bounds its error rates on the evaluation trials.

    ``criterion(fpr_upper, fnr_upper) -> values`` is maximised over thresholds. Returns
    the threshold, its FP/FN counts, rate upper bounds and criterion value, and the
    evaluation trial counts.
    """
    if selection == "split":
        # Choose on the first half of each side, evaluate the chosen test on the second.
        choose_present, present = present[: present.size // 2], present[present.size // 2:]
        choose_absent, absent = absent[: absent.size // 2], absent[absent.size // 2:]
        thresholds, fp, fn = _threshold_error_counts(choose_present, choose_absent, None)
        values = criterion(clopper_pearson_upper(np.arange(choose_absent.size + 1), choose_absent.size, alpha)[fp],
                           clopper_pearson_upper(np.arange(choose_present.size + 1), choose_present.size, alpha)[fn])
        candidates = np.array([thresholds[int(np.argmax(values))]])
    else:
        candidates = None if threshold is None else np.array([threshold])
    thresholds, fp, fn = _threshold_error_counts(present, absent, candidates)
    fpr_upper = clopper_pearson_upper(np.arange(absent.size + 1), absent.size, alpha)[fp]
    fnr_upper = clopper_pearson_upper(np.arange(present.size + 1), present.size, alpha)[fn]
    values = criterion(fpr_upper, fnr_upper)
    best = int(np.argmax(values))
    details = {
        "threshold": float(thresholds[best]),
        "false_positives": int(fp[best]),
        "false_negatives": int(fn[best]),
        "fpr": float(fp[best] / absent.size),
        "fnr": float(fn[best] / present.size),
        "fpr_upper": float(fpr_upper[best]),
        "fnr_upper": float(fnr_upper[best]),
        "num_eval_present": int(present.size),
        "num_eval_absent": int(absent.size),
    }
    return float(values[best]), details


def _eval_sizes(present: np.ndarray, absent: np.ndarray, selection: str) -> tuple[int, int]:
    if selection == "split":
        return present.size - present.size // 2, absent.size - absent.size // 2
    return present.size, absent.size


def clopper_pearson_audit(present_scores, absent_scores, *, delta: float = 0.0, alpha: float = 0.05,
                          threshold: float | None = None, threshold_selection: str = "search") -> AuditResult:
    """Epsilon lower bound from many trials, by Clopper-Pearson intervals on the error rates.

    The test calls a trial "canary present" when its score is ``>= t``. For the best
    ``t`` (chosen by ``threshold_selection``, or the given ``threshold``), the false
    positive rate (absent trials called present) and the false negative rate (present
    trials called absent) are bounded above by two-sided ``(1 - alpha)``
    Clopper-Pearson intervals, and ``epsilon_lb = max(ln((1 - delta - FNR_ub) / FPR_ub),
    ln((1 - delta - FPR_ub) / FNR_ub), 0)``.

    Args:
      present_scores: ``[N1]`` scores of independent trials run WITH the canary (higher
        means "looks present"; turn losses into scores with
        :func:`fedpriv.privacy.canaries.loss_scores`).
      absent_scores: ``[N0]`` scores of independent trials run WITHOUT the canary.
      delta: the delta the bound is stated at, in [0, 1).
      alpha: 1 - confidence, in (0, 1).
      threshold: a threshold fixed before the trials, or ``None`` to choose one by
        ``threshold_selection``.
      threshold_selection: ``"search"`` (every observed score; optimistic confidence)
        or ``"split"`` (choose on the first half of each side, evaluate on the second;
        exact confidence); see the module docstring. Ignored with a ``threshold``.

    Returns:
      An :class:`AuditResult` with ``details``: ``threshold``, ``false_positives``,
      ``false_negatives``, ``fpr``, ``fnr``, ``fpr_upper``, ``fnr_upper`` (all on the
      evaluation trials), ``num_eval_present``, ``num_eval_absent``,
      ``max_certifiable_epsilon`` (the cap of a perfect test on the evaluation trials).

    Raises:
      ValueError: if an argument is invalid, or the trials are so few that even perfect
        separation certifies nothing (checked before the scores are compared).

    **Formal guarantees**

    - Bound: with a fixed threshold or ``"split"``, and independent trials, with
      probability ``>= 1 - alpha`` the mechanism that produced the trials is not
      ``(epsilon, delta)``-DP for any epsilon below ``epsilon_lower_bound``. With
      ``"search"`` the stated confidence is that of one threshold; the true coverage is
      lower (about 93 % at N = 1000 and 86 % at N = 10000 per side for alpha = 0.05;
      module docstring).
    - Relation and unit: add/remove-one canary (one example for DP-SGD, one client for
      DP-FedAvg), as the trials were built.
    - Not shown: that the mechanism is private (a small bound may be a weak attack); the
      bound can never exceed :func:`max_certifiable_epsilon` of the trial counts.

    References:
      Jagielski, Ullman, Oprea 2020, arXiv 2006.07709.
      Nasr, Song, Thakurta, Papernot, Carlini 2021, arXiv 2101.04535.

    Example:
      >>> result = clopper_pearson_audit(np.ones(100), np.zeros(100))
      >>> round(result.epsilon_lower_bound, 4)
      3.2813
    """
    present, absent, alpha, delta, threshold, selection = _check_trials(
        present_scores, absent_scores, alpha, delta, threshold, threshold_selection)
    num_present, num_absent = _eval_sizes(present, absent, selection)
    cap = max_certifiable_epsilon(num_present=num_present, num_absent=num_absent, alpha=alpha, delta=delta)
    if cap <= 0.0:
        raise _too_few_trials(num_present, num_absent, alpha, delta, "epsilon", selection)
    epsilon, details = _rate_bound_audit(present, absent, alpha, threshold, selection,
                                         lambda fpr_ub, fnr_ub: _epsilon_from_rate_bounds(fpr_ub, fnr_ub, delta))
    details["max_certifiable_epsilon"] = cap
    return AuditResult(method="clopper_pearson", epsilon_lower_bound=epsilon, delta=delta, confidence=1.0 - alpha,
                       num_trials_present=present.size, num_trials_absent=absent.size, threshold_selection=selection,
                       details=details)
