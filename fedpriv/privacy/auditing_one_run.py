"""The one-run audit of Steinke, Nasr and Jagielski 2023 (arXiv 2305.08846); see :mod:`fedpriv.privacy.auditing`."""

from __future__ import annotations

import numbers

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

from fedpriv.privacy.auditing import (AuditResult, _check_alpha, _check_audit_delta, _check_count, _check_scores, max_certifiable_epsilon)


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
      3.493
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
