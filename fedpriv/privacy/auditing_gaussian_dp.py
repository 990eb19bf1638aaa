"""The Gaussian-DP audit estimator (forward direction only); see :mod:`fedpriv.privacy.auditing`."""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

from fedpriv.privacy.auditing import (AuditResult, _check_audit_delta, _check_trials, _eval_sizes, _rate_bound_audit, _too_few_trials, clopper_pearson_audit, clopper_pearson_upper)


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


def _mu_from_rate_bounds(fpr_upper: np.ndarray, fnr_upper: np.ndarray) -> np.ndarray:
    # isf(p) = Phi^{-1}(1 - p) without cancellation; an upper bound of 1 maps to -inf, then 0.
    mus = np.maximum(stats.norm.isf(fpr_upper) - stats.norm.ppf(fnr_upper), 0.0)
    return np.where(np.isfinite(mus), mus, 0.0)


def gaussian_dp_audit(present_scores, absent_scores, *, delta: float, alpha: float = 0.05,
                      threshold: float | None = None, threshold_selection: str = "search") -> AuditResult:
    """Epsilon lower bound assuming a Gaussian trade-off curve (forward direction only).

    For the best threshold ``t`` (by ``threshold_selection``, or the given
    ``threshold``), the error rates are bounded above as in
    :func:`clopper_pearson_audit`, then ``mu_lb =
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
      threshold: a threshold fixed before the trials, or ``None``.
      threshold_selection: ``"search"`` or ``"split"``, as for
        :func:`clopper_pearson_audit` (module docstring).

    Returns:
      An :class:`AuditResult` with ``details`` as for Clopper-Pearson plus
      ``mu_lower_bound`` and ``max_certifiable_mu``.

    Raises:
      ValueError: if an argument is invalid or the trials are too few for any bound.

    **Formal guarantees**

    - Bound: IF the audited mechanism is mu-GDP for some mu (its trade-off curve is
      ``T(a) = Phi(Phi^{-1}(1 - a) - mu)``; true of one full-batch Gaussian release, e.g.
      one DP-SGD step with q = 1), then with probability ``>= 1 - alpha`` (fixed
      threshold or ``"split"``; lower with ``"search"``: measured 91 % at N = 1000 and
      80 % at N = 10000 per side) ``mu >= mu_lower_bound`` and the mechanism is not
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
    present, absent, alpha, delta, threshold, selection = _check_trials(
        present_scores, absent_scores, alpha, delta, threshold, threshold_selection, allow_zero_delta=False)
    num_present, num_absent = _eval_sizes(present, absent, selection)
    cap_mu = float(_mu_from_rate_bounds(clopper_pearson_upper(np.array([0]), num_absent, alpha),
                                        clopper_pearson_upper(np.array([0]), num_present, alpha))[0])
    if gaussian_dp_epsilon(cap_mu, delta) <= 0.0:
        raise _too_few_trials(num_present, num_absent, alpha, delta, "Gaussian-DP epsilon", selection)
    mu_lower_bound, details = _rate_bound_audit(present, absent, alpha, threshold, selection, _mu_from_rate_bounds)
    details["mu_lower_bound"] = mu_lower_bound
    details["max_certifiable_mu"] = cap_mu
    return AuditResult(method="gaussian_dp", epsilon_lower_bound=gaussian_dp_epsilon(mu_lower_bound, delta),
                       delta=delta, confidence=1.0 - alpha, num_trials_present=present.size,
                       num_trials_absent=absent.size, threshold_selection=selection, details=details)
