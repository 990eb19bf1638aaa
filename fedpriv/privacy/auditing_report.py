"""Audit results as flat ``audit.*`` entries for ``metrics.json``."""

from __future__ import annotations

import math
import numbers

import numpy as np

from fedpriv.privacy.auditing import AuditResult


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
