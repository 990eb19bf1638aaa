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
- :func:`gaussian_dp_audit`: the same error-rate upper bounds, read as a lower bound on
  the Gaussian-DP parameter mu and converted to epsilon (valid only for mechanisms whose
  trade-off curve is Gaussian, such as one full-batch DP-SGD step).
- :func:`one_run_audit`: one run with many canaries, each inserted with probability 1/2
  (Steinke, Nasr, Jagielski 2023).

Canaries and scores (the experiments that feed these estimators) are in
:mod:`fedpriv.privacy.canaries`. Everything here is host-side NumPy/SciPy, like the
accountants.

Threshold choice (Clopper-Pearson and Gaussian-DP estimators): unless a ``threshold``
is given, the test "score >= t means present" is searched over every observed score t
and the best t is reported, with the confidence of ONE pre-chosen threshold. This is
what Jagielski et al. 2020 and Nasr et al. 2021 do, and it is what reproduces the
reference caps (shared/reference/README.md) from N trials per side; but the search is
a multiple comparison, so the stated confidence is optimistic. Measured on null scores
(present and absent from the same distribution, 2000 seeds, alpha = 0.05, delta = 0):
a positive bound in 3.2 % of seeds with N = 100 per side and 6.6 % with N = 1000 per
side, against the nominal 5 %. For a strictly valid confidence, choose the threshold
on separate trials and pass it as ``threshold``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

METHODS: tuple[str, ...] = ("clopper_pearson", "gaussian_dp", "one_run")
THRESHOLD_SELECTIONS: tuple[str, ...] = ("search", "fixed", "top_k")


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
      threshold_selection: ``"search"`` (best observed threshold), ``"fixed"`` (given
        in advance) or ``"top_k"`` (one-run guesses on the k highest/lowest scores).
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
                            threshold: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds t (test: score >= t means present) and their FP and FN counts."""
    thresholds = np.unique(np.concatenate([present, absent])) if threshold is None else np.array([threshold])
    false_negatives = np.searchsorted(np.sort(present), thresholds, side="left")
    false_positives = absent.size - np.searchsorted(np.sort(absent), thresholds, side="left")
    return thresholds, false_positives, false_negatives


def _check_trials(present_scores, absent_scores, alpha, delta, threshold, *, allow_zero_delta=True):
    # Every argument is checked before the first score is compared.
    present = _check_scores(present_scores, "present_scores")
    absent = _check_scores(absent_scores, "absent_scores")
    alpha = _check_alpha(alpha)
    delta = _check_audit_delta(delta, allow_zero=allow_zero_delta)
    threshold = _check_threshold(threshold)
    return present, absent, alpha, delta, threshold


def _too_few_trials(present: np.ndarray, absent: np.ndarray, alpha: float, delta: float, what: str) -> ValueError:
    # Smallest N per side whose perfect separation certifies a positive bound:
    # 2 (alpha/2)^(1/N) > 1 + delta.
    needed = math.floor(math.log(alpha / 2.0) / math.log((1.0 + delta) / 2.0)) + 1
    return ValueError(
        f"present_scores/absent_scores have {present.size}/{absent.size} trials: even a perfect separation "
        f"certifies no positive {what} at alpha={alpha}, delta={delta}; use at least {needed} trials per side")


def clopper_pearson_audit(present_scores, absent_scores, *, delta: float = 0.0, alpha: float = 0.05,
                          threshold: float | None = None) -> AuditResult:
    """Epsilon lower bound from many trials, by Clopper-Pearson intervals on the error rates.

    The test calls a trial "canary present" when its score is ``>= t``. For the best
    ``t`` (searched over every observed score, or the given ``threshold``), the false
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
      threshold: ``None`` to search every observed score (see the module docstring for
        the multiple-comparison caveat), or a threshold fixed before the trials.

    Returns:
      An :class:`AuditResult` with ``details``: ``threshold``, ``false_positives``,
      ``false_negatives``, ``fpr``, ``fnr``, ``fpr_upper``, ``fnr_upper``,
      ``max_certifiable_epsilon`` (the cap of a perfect test on these trial counts).

    Raises:
      ValueError: if an argument is invalid, or the trials are so few that even perfect
        separation certifies nothing (checked before the scores are compared).

    **Formal guarantees**

    - Bound: with a fixed threshold and independent trials, with probability ``>= 1 -
      alpha`` the mechanism that produced the trials is not ``(epsilon, delta)``-DP for
      any epsilon below ``epsilon_lower_bound``. With the threshold search the stated
      confidence is that of one threshold; the true coverage is lower (measured 93.4 %
      at N = 1000 per side, alpha = 0.05; module docstring).
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
    present, absent, alpha, delta, threshold = _check_trials(present_scores, absent_scores, alpha, delta, threshold)
    cap = max_certifiable_epsilon(num_present=present.size, num_absent=absent.size, alpha=alpha, delta=delta)
    if cap <= 0.0:
        raise _too_few_trials(present, absent, alpha, delta, "epsilon")
    thresholds, false_positives, false_negatives = _threshold_error_counts(present, absent, threshold)
    fpr_table = clopper_pearson_upper(np.arange(absent.size + 1), absent.size, alpha)
    fnr_table = clopper_pearson_upper(np.arange(present.size + 1), present.size, alpha)
    fpr_upper, fnr_upper = fpr_table[false_positives], fnr_table[false_negatives]
    epsilons = _epsilon_from_rate_bounds(fpr_upper, fnr_upper, delta)
    best = int(np.argmax(epsilons))
    details = {
        "threshold": float(thresholds[best]),
        "false_positives": int(false_positives[best]),
        "false_negatives": int(false_negatives[best]),
        "fpr": float(false_positives[best] / absent.size),
        "fnr": float(false_negatives[best] / present.size),
        "fpr_upper": float(fpr_upper[best]),
        "fnr_upper": float(fnr_upper[best]),
        "max_certifiable_epsilon": cap,
    }
    return AuditResult(method="clopper_pearson", epsilon_lower_bound=float(epsilons[best]), delta=delta,
                       confidence=1.0 - alpha, num_trials_present=present.size, num_trials_absent=absent.size,
                       threshold_selection="search" if threshold is None else "fixed", details=details)


# -- Gaussian DP ----------------------------------------------------------------------------

def _gdp_log_delta(epsilon: float, mu: float) -> float:
    # log(Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)), computed in log space.
    log_first = special.log_ndtr(-epsilon / mu + mu / 2.0)
    log_second = epsilon + special.log_ndtr(-epsilon / mu - mu / 2.0)
    gap = log_second - log_first
    if gap >= 0.0:
        return -math.inf
    return float(log_first + math.log(-math.expm1(gap)))


def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon at which a mu-GDP mechanism is ``(epsilon, delta)``-DP.

    Solves ``delta = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2)`` for
    ``epsilon >= 0`` (Dong, Roth, Su 2019, Corollary 2.13), in log space with Brent's
    method. The Gaussian mechanism with L2 sensitivity 1 and noise stddev ``sigma`` is
    ``1/sigma``-GDP, so this equals ``dp_accounting.get_epsilon_gaussian(1 / mu, delta)``
    (the analytic Gaussian mechanism of Balle and Wang 2018).

    Args:
      mu: the GDP parameter, a finite number ``>= 0`` (0 gives epsilon 0).
      delta: in (0, 1).

    Returns:
      Epsilon, ``>= 0`` (0 when ``delta >= 2 Phi(mu/2) - 1``).

    Raises:
      ValueError: if ``mu`` is negative or not finite, or ``delta`` is outside (0, 1).

    References:
      Dong, Roth, Su 2019, "Gaussian Differential Privacy", arXiv 1905.02383.
      Balle, Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy",
      arXiv 1805.06530.

    Example:
      >>> round(gaussian_dp_epsilon(1.0, 1e-5), 4)
      4.3772
    """
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not (0.0 <= float(mu) < math.inf):
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    delta = _check_audit_delta(delta, allow_zero=False)
    mu = float(mu)
    if mu == 0.0:
        return 0.0
    log_delta = math.log(delta)
    if _gdp_log_delta(0.0, mu) <= log_delta:
        return 0.0
    upper = 1.0
    while _gdp_log_delta(upper, mu) > log_delta:
        upper *= 2.0
    return float(optimize.brentq(lambda eps: _gdp_log_delta(eps, mu) - log_delta, 0.0, upper, xtol=1e-12,
                                 rtol=4 * np.finfo(float).eps))


def gaussian_dp_audit(present_scores, absent_scores, *, delta: float, alpha: float = 0.05,
                      threshold: float | None = None) -> AuditResult:
    """Epsilon lower bound assuming a Gaussian trade-off curve (forward direction only).

    For the best threshold ``t`` (searched, or the given ``threshold``), the error rates
    are bounded above as in :func:`clopper_pearson_audit`, then ``mu_lb =
    Phi^{-1}(1 - FPR_ub) - Phi^{-1}(FNR_ub)`` (clipped at 0) and ``epsilon_lb =``
    :func:`gaussian_dp_epsilon` ``(mu_lb, delta)``. "Forward only": one (FPR, FNR) point
    is mapped to mu and mu to epsilon; no trade-off curve is fitted and no epsilon is
    mapped back to error rates.

    Args:
      present_scores: ``[N1]`` scores of trials with the canary (higher: looks present).
      absent_scores: ``[N0]`` scores of trials without it.
      delta: in (0, 1): a mu-GDP mechanism with mu > 0 is not ``(epsilon, 0)``-DP for
        any finite epsilon, so delta = 0 is refused.
      alpha: 1 - confidence, in (0, 1).
      threshold: ``None`` to search (caveat in the module docstring) or a fixed
        threshold.

    Returns:
      An :class:`AuditResult` with ``details`` as for Clopper-Pearson plus
      ``mu_lower_bound``.

    Raises:
      ValueError: if an argument is invalid or the trials are too few for any bound.

    **Formal guarantees**

    - Bound: IF the audited mechanism is mu-GDP for some mu (its trade-off curve is
      ``T(a) = Phi(Phi^{-1}(1 - a) - mu)``; true of one full-batch Gaussian release, e.g.
      one DP-SGD step with q = 1), then with probability ``>= 1 - alpha`` (fixed
      threshold; lower with the search) ``mu >= mu_lower_bound`` and the mechanism is not
      ``(epsilon, delta)``-DP for epsilon below ``epsilon_lower_bound``.
    - Relation and unit: add/remove-one canary, as the trials were built.
    - Not shown: anything for mechanisms whose trade-off curve is not Gaussian
      (e.g. randomized response, or Poisson-subsampled DP-SGD with q < 1): there the
      number can exceed the true epsilon; use :func:`clopper_pearson_audit`.

    References:
      Nasr, Hayes, Steinke, Balle, Tramer, Jagielski, Carlini, Terzis 2023, "Tight
      Auditing of Differentially Private Machine Learning", arXiv 2302.07956.
      Dong, Roth, Su 2019, "Gaussian Differential Privacy", arXiv 1905.02383.
    """
    present, absent, alpha, delta, threshold = _check_trials(present_scores, absent_scores, alpha, delta, threshold,
                                                             allow_zero_delta=False)
    fpr_table = clopper_pearson_upper(np.arange(absent.size + 1), absent.size, alpha)
    fnr_table = clopper_pearson_upper(np.arange(present.size + 1), present.size, alpha)
    cap_mu = max(float(stats.norm.isf(fpr_table[0]) - stats.norm.ppf(fnr_table[0])), 0.0)
    if gaussian_dp_epsilon(cap_mu, delta) <= 0.0:
        raise _too_few_trials(present, absent, alpha, delta, "Gaussian-DP epsilon")
    thresholds, false_positives, false_negatives = _threshold_error_counts(present, absent, threshold)
    fpr_upper, fnr_upper = fpr_table[false_positives], fnr_table[false_negatives]
    # isf(p) = Phi^{-1}(1 - p) without cancellation; an upper bound of 1 maps to -inf.
    mus = np.maximum(stats.norm.isf(fpr_upper) - stats.norm.ppf(fnr_upper), 0.0)
    mus = np.where(np.isfinite(mus), mus, 0.0)
    best = int(np.argmax(mus))
    mu_lower_bound = float(mus[best])
    details = {
        "threshold": float(thresholds[best]),
        "false_positives": int(false_positives[best]),
        "false_negatives": int(false_negatives[best]),
        "fpr": float(false_positives[best] / absent.size),
        "fnr": float(false_negatives[best] / present.size),
        "fpr_upper": float(fpr_upper[best]),
        "fnr_upper": float(fnr_upper[best]),
        "mu_lower_bound": mu_lower_bound,
        "max_certifiable_mu": cap_mu,
    }
    return AuditResult(method="gaussian_dp", epsilon_lower_bound=gaussian_dp_epsilon(mu_lower_bound, delta),
                       delta=delta, confidence=1.0 - alpha, num_trials_present=present.size,
                       num_trials_absent=absent.size, threshold_selection="search" if threshold is None else "fixed",
                       details=details)


# -- one run (Steinke, Nasr, Jagielski 2023) -----------------------------------------------

def one_run_p_value(*, num_canaries: int, num_guesses: int, num_correct: int, epsilon: float,
                    delta: float = 0.0) -> float:
    """Probability of at least ``num_correct`` right guesses if the mechanism is (epsilon, delta)-DP.

    With ``m`` canaries each included independently with probability 1/2 and ``r``
    guesses, an ``(epsilon, 0)``-DP mechanism makes the number of correct guesses
    stochastically dominated by ``Binomial(r, e^epsilon / (1 + e^epsilon))``, so the
    p-value is that binomial's tail ``f(v) = P[Binomial >= v]``. For ``delta > 0`` the
    main theorem of Steinke et al. adds ``2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) /
    i``. The result is capped at 1.

    Args:
      num_canaries: ``m >= 1``, every randomized canary (guessed or not).
      num_guesses: ``r``, in [0, m].
      num_correct: ``v``, in [0, r].
      epsilon: the null hypothesis' epsilon, ``>= 0``.
      delta: the null hypothesis' delta, in [0, 1).

    Returns:
      The p-value in [0, 1].

    Raises:
      ValueError: if an argument is outside its range.

    References:
      Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run",
      arXiv 2305.08846.
    """
    m = _check_count(num_canaries, "num_canaries", minimum=1)
    r = _check_count(num_guesses, "num_guesses")
    v = _check_count(num_correct, "num_correct")
    if r > m:
        raise ValueError(f"num_guesses must be in [0, num_canaries={m}], got {r}")
    if v > r:
        raise ValueError(f"num_correct must be in [0, num_guesses={r}], got {v}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not float(epsilon) >= 0.0:
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
    delta = _check_audit_delta(delta)
    return _one_run_p_value(m, r, v, float(epsilon), delta)


def _one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    if v == 0:
        return 1.0
    accuracy = special.expit(epsilon)  # e^eps / (1 + e^eps), the accuracy of eps-randomized response
    tail = float(stats.binom.sf(v - 1, r, accuracy))
    if delta > 0.0:
        # f(v - i) - f(v) = P[v - i <= Binomial < v], a running sum of the pmf below v.
        below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, accuracy))
        tail += 2.0 * m * delta * float(np.max(below / np.arange(1, v + 1)))
    return min(tail, 1.0)


def one_run_epsilon_lower_bound(*, num_canaries: int, num_guesses: int, num_correct: int, delta: float = 0.0,
                                alpha: float = 0.05) -> float:
    """The largest epsilon whose one-run p-value is at most ``alpha`` (0 if none).

    Every ``(epsilon', delta)`` with ``epsilon' < epsilon_lb`` is rejected at level
    ``alpha`` by :func:`one_run_p_value`; solved by Brent's method (the p-value is
    continuous and increasing in epsilon). With all ``r`` guesses right and ``delta = 0``
    this is ``logit(alpha^(1/r))``.

    Raises:
      ValueError: if an argument is outside its range.

    References:
      Steinke, Nasr, Jagielski 2023, arXiv 2305.08846.

    Example:
      >>> round(one_run_epsilon_lower_bound(num_canaries=100, num_guesses=100, num_correct=100), 4)
      3.4278
    """
    alpha = _check_alpha(alpha)
    one_run_p_value(num_canaries=num_canaries, num_guesses=num_guesses, num_correct=num_correct, epsilon=0.0,
                    delta=delta)  # validates the rest
    m, r, v, delta = int(num_canaries), int(num_guesses), int(num_correct), float(delta)
    if _one_run_p_value(m, r, v, 0.0, delta) > alpha:
        return 0.0
    upper = 1.0
    while _one_run_p_value(m, r, v, upper, delta) <= alpha:
        upper *= 2.0
    return float(optimize.brentq(lambda eps: _one_run_p_value(m, r, v, eps, delta) - alpha, 0.0, upper,
                                 xtol=1e-12))


def one_run_audit(scores, included, *, num_positive_guesses: int, num_negative_guesses: int,
                  delta: float = 0.0, alpha: float = 0.05) -> AuditResult:
    """Epsilon lower bound from ONE run with ``m`` randomly included canaries.

    The auditor guesses "included" for the ``num_positive_guesses`` highest scores and
    "excluded" for the ``num_negative_guesses`` lowest, abstains on the rest, counts the
    correct guesses ``v`` of ``r`` and reports :func:`one_run_epsilon_lower_bound`. The
    guess counts must be fixed before seeing the scores (choosing them afterwards is a
    multiple comparison). Ties in scores are broken by position (stable sort).

    Args:
      scores: ``[m]`` one score per canary (higher: looks included).
      included: ``[m]`` booleans, whether each canary was in the run; each must have
        been drawn independently with probability 1/2 (see
        :func:`fedpriv.privacy.canaries.run_one_run_gradient_canaries`).
      num_positive_guesses: ``k+ >= 0``.
      num_negative_guesses: ``k- >= 0``, with ``1 <= k+ + k- <= m``.
      delta: in [0, 1). ``delta = 0`` is the exact binomial test; ``delta > 0`` uses the
        paper's correction, which needs ``2 m delta`` well below ``alpha``.
      alpha: 1 - confidence, in (0, 1).

    Returns:
      An :class:`AuditResult` (``num_trials_present``/``absent``: included/excluded
      canaries) with ``details``: ``num_canaries``, ``num_guesses``, ``num_correct``,
      ``num_positive_guesses``, ``num_negative_guesses``, ``max_certifiable_epsilon``.

    Raises:
      ValueError: if an argument is invalid, the arrays disagree in length, or even all
        ``r`` guesses right would certify nothing (checked before any compute).

    **Formal guarantees**

    - Bound: if the inclusions were independent fair coins and the guess counts were
      fixed in advance, then with probability ``>= 1 - alpha`` the mechanism is not
      ``(epsilon, delta)``-DP (per canary, add/remove-one) for any epsilon below
      ``epsilon_lower_bound``. Exact for ``delta = 0``; for ``delta > 0`` as in the paper.
    - Relation and unit: add/remove-one canary (one example or one client).
    - Not shown: tightness. One run certifies much less than many runs (at most
      ``logit(alpha^(1/r))`` even with perfect guesses), and the bound is loose for
      ``delta > 0`` and for large epsilon.

    References:
      Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run",
      arXiv 2305.08846.
    """
    scores = _check_scores(scores, "scores")
    included = np.asarray(included)
    if included.shape != scores.shape:
        raise ValueError(f"included must have the same shape as scores {scores.shape}, got {included.shape}")
    if included.dtype != np.bool_:
        if not np.all(np.isin(included, (0, 1))):
            raise ValueError("included must hold booleans (or 0/1), got other values")
        included = included.astype(bool)
    m = scores.size
    k_pos = _check_count(num_positive_guesses, "num_positive_guesses")
    k_neg = _check_count(num_negative_guesses, "num_negative_guesses")
    if not 1 <= k_pos + k_neg <= m:
        raise ValueError(f"num_positive_guesses + num_negative_guesses must be in [1, len(scores)={m}], "
                         f"got {k_pos} + {k_neg}")
    alpha = _check_alpha(alpha)
    delta = _check_audit_delta(delta)
    r = k_pos + k_neg
    cap = one_run_epsilon_lower_bound(num_canaries=m, num_guesses=r, num_correct=r, delta=delta, alpha=alpha)
    if cap <= 0.0:
        raise ValueError(
            f"num_positive_guesses + num_negative_guesses = {r} (of {m} canaries): even {r} correct guesses "
            f"certify no positive epsilon at alpha={alpha}, delta={delta}; guess more (or lower 2 m delta)")
    order = np.argsort(scores, kind="stable")
    guessed_in = order[m - k_pos:] if k_pos else order[:0]
    guessed_out = order[:k_neg]
    correct = int(np.sum(included[guessed_in]) + np.sum(~included[guessed_out]))
    epsilon = one_run_epsilon_lower_bound(num_canaries=m, num_guesses=r, num_correct=correct, delta=delta,
                                          alpha=alpha)
    details = {
        "num_canaries": m,
        "num_guesses": r,
        "num_correct": correct,
        "num_positive_guesses": k_pos,
        "num_negative_guesses": k_neg,
        "max_certifiable_epsilon": cap,
    }
    return AuditResult(method="one_run", epsilon_lower_bound=epsilon, delta=delta, confidence=1.0 - alpha,
                       num_trials_present=int(np.sum(included)), num_trials_absent=int(m - np.sum(included)),
                       threshold_selection="top_k", details=details)


# -- reporting --------------------------------------------------------------------------------

def audit_report(result: AuditResult, accountant_epsilon: float) -> dict[str, float | int | str | bool]:
    """Flat, JSON-able ``{"audit.<field>": value}`` for ``metrics.json``.

    Keys: ``audit.method``, ``audit.epsilon_lower_bound``, ``audit.accountant_epsilon``,
    ``audit.delta``, ``audit.confidence``, ``audit.num_trials_present``,
    ``audit.num_trials_absent``, ``audit.threshold_selection``,
    ``audit.tightness`` (lower bound / accountant epsilon; 0 for an infinite accountant
    epsilon, nan when both are 0), ``audit.exceeds_accountant`` (True when the lower bound
    is above the accountant's epsilon: the implementation or its analysis is wrong, up to
    the confidence level) and ``audit.details.<name>`` for every detail.

    Args:
      result: an :class:`AuditResult`.
      accountant_epsilon: the accountant's epsilon at the same delta, ``>= 0`` (``inf``
        allowed, e.g. no noise).

    Raises:
      ValueError: if ``result`` is not an :class:`AuditResult` or ``accountant_epsilon``
        is negative or nan.

    **Formal guarantees**

    - Bound: none of its own; it restates ``result`` next to the accountant's epsilon.
      ``exceeds_accountant`` is a refutation at the audit's confidence only if both
      numbers are stated at the same delta and for the same unit.
    """
    if not isinstance(result, AuditResult):
        raise ValueError(f"result must be an AuditResult, got {type(result).__name__}")
    value = accountant_epsilon
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0:
        raise ValueError(f"accountant_epsilon must be a number >= 0 (inf allowed), got {accountant_epsilon!r}")
    accountant_epsilon = float(value)
    lower = result.epsilon_lower_bound
    if math.isinf(accountant_epsilon):
        tightness = 0.0
    elif accountant_epsilon == 0.0:
        tightness = math.nan if lower == 0.0 else math.inf
    else:
        tightness = lower / accountant_epsilon
    flat: dict[str, float | int | str | bool] = {
        "audit.method": result.method,
        "audit.epsilon_lower_bound": lower,
        "audit.accountant_epsilon": accountant_epsilon,
        "audit.delta": result.delta,
        "audit.confidence": result.confidence,
        "audit.num_trials_present": result.num_trials_present,
        "audit.num_trials_absent": result.num_trials_absent,
        "audit.threshold_selection": result.threshold_selection,
        "audit.tightness": tightness,
        "audit.exceeds_accountant": bool(lower > accountant_epsilon),
    }
    for name, detail in result.details.items():
        if isinstance(detail, (bool, np.bool_)):
            detail = bool(detail)
        elif isinstance(detail, numbers.Integral):
            detail = int(detail)
        elif isinstance(detail, numbers.Real):
            detail = float(detail)
        flat[f"audit.details.{name}"] = detail
    return flat
