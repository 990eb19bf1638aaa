"""Calibration: the smallest noise that meets a privacy budget, and the rounds a budget buys.

- :func:`calibrate_noise_multiplier`: one noise multiplier for a fixed number of steps.
- :func:`calibrate_tiers`: one noise multiplier per privacy tier, each for its own budget.
- :func:`affordable_rounds`: the most rounds a fixed noise multiplier can run within a budget.

Uses ``dp_accounting.calibrate_dp_mechanism`` (Brent's method, then a guard that the
returned parameter is on the private side of the target). We give it an explicit
bracket so it never probes a noise multiplier of 0 (infinite epsilon, which Brent's
method cannot work with) and, for PLD, never probes tiny noise multipliers, whose
privacy loss distributions are huge and slow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping

import dp_accounting

from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import events as events_lib

logger = logging.getLogger(__name__)

# Brent's method stops when the bracket is this fraction of the noise multiplier wide.
# Epsilon of the sampled Gaussian scales roughly like 1 / noise_multiplier, so a relative
# parameter tolerance of 1e-5 puts epsilon within ~1e-5 (relative) of the target, far
# inside the promised 1 %.
RELATIVE_TOLERANCE = 1e-5
# The calibrated noise multiplier must give epsilon within this fraction below target.
MAX_RELATIVE_SLACK = 0.01
_SMALLEST_NOISE_MULTIPLIER = 1e-3
_LARGEST_NOISE_MULTIPLIER = 1e6


class _MemoizedAccountant(dp_accounting.PrivacyAccountant):
    """A fresh accountant for ``calibrate_dp_mechanism`` whose epsilons come from a shared cache.

    Brent's method re-evaluates the bracket ends we already probed, and
    ``calibrate_dp_mechanism``'s guard and our final check re-evaluate the root. With PLD
    probes costing 0.1-0.5 s each, caching epsilon by ``(event, delta)`` saves about a
    third of a PLD calibration. The real accountant (:func:`make_accountant`) does the
    work; this one only records what was composed.
    """

    def __init__(self, accountant: str, cache: dict):
        super().__init__(accountant_lib.NEIGHBORING_RELATION)
        self._accountant = accountant
        self._cache = cache

    def _maybe_compose(self, event, count, do_compose):
        del event, count, do_compose  # the real accountant checks support in get_epsilon
        return None

    def get_epsilon(self, target_delta: float) -> float:
        # repr, not the event: a ComposedDpEvent holds a list and is unhashable. Float reprs
        # round-trip exactly, so equal reprs mean equal events.
        key = (repr(self.ledger), target_delta)
        if key not in self._cache:
            real = accountant_lib._composed(self.ledger, self._accountant)
            self._cache[key] = float(real.get_epsilon(target_delta))
        return self._cache[key]


def _bracket(epsilon_of, target_epsilon: float, start: float, factor: float,
             what: str = "noise_multiplier") -> tuple[float, float]:
    """Returns ``(low, high)`` with ``epsilon_of(low) > target >= epsilon_of(high)``."""
    low = high = start
    if epsilon_of(start) > target_epsilon:
        while True:
            low, high = high, high * factor
            if high > _LARGEST_NOISE_MULTIPLIER:
                raise ValueError(f"target_epsilon={target_epsilon!r} needs a {what} above "
                                 f"{_LARGEST_NOISE_MULTIPLIER:g}; allowed: a larger target_epsilon")
            if epsilon_of(high) <= target_epsilon:
                return low, high
    while True:
        low, high = low / factor, low
        if low < _SMALLEST_NOISE_MULTIPLIER:
            raise ValueError(f"target_epsilon={target_epsilon!r} is met by any {what} >= "
                             f"{_SMALLEST_NOISE_MULTIPLIER:g}; allowed: a smaller target_epsilon")
        if epsilon_of(low) > target_epsilon:
            return low, high


def _calibrate(
    make_event: Callable[[float], dp_accounting.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str,
    what: str = "noise_multiplier",
) -> float:
    """The smallest ``x`` in [1e-3, 1e6] with ``epsilon(make_event(x)) <= target_epsilon``, within 1 %.

    ``make_event`` must give less privacy loss as ``x`` grows (more noise). Arguments are
    validated by the caller.
    """
    cache: dict = {}

    def epsilon_of(value: float, name: str = accountant) -> float:
        return _MemoizedAccountant(name, cache).compose(make_event(value)).get_epsilon(delta)

    def calibrate(name: str, low: float, high: float) -> float:
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _MemoizedAccountant(name, cache),
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            tol=RELATIVE_TOLERANCE * low,
        ))

    # RDP is cheap (~15 ms per probe): calibrate with it first. RDP >= PLD, so the RDP
    # value is private enough under PLD too and is the upper end of the PLD bracket; PLD
    # typically needs 80-97 % of it, so the lower end is found in one or two PLD probes
    # (~0.1-0.5 s each) instead of a long walk down from a loose bracket.
    value = calibrate("rdp", *_bracket(lambda x: epsilon_of(x, "rdp"), target_epsilon, 1.0, 2.0, what))
    if accountant == "pld":
        value = calibrate("pld", *_bracket(epsilon_of, target_epsilon, value, 1.15, what))
    value = float(value)
    achieved = epsilon_of(value)
    if not (1.0 - MAX_RELATIVE_SLACK) * target_epsilon <= achieved <= target_epsilon:
        raise RuntimeError(f"calibration missed: {what}={value!r} gives epsilon={achieved!r} "
                           f"for target_epsilon={target_epsilon!r} ({accountant})")
    logger.info("calibrated %s=%.6g: epsilon=%.6g (target %.6g, delta %g, %s)",
                what, value, achieved, target_epsilon, delta, accountant)
    return value


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: accountant_lib.AccountantName = "rdp",
) -> float:
    """The smallest noise multiplier whose DP-SGD event is ``(target_epsilon, delta)``-DP.

    Args:
      target_epsilon: privacy budget, finite and > 0.
      delta: target delta, in (0, 1).
      sampling_rate: Poisson sampling rate per step, in (0, 1].
      steps: number of releases, ``>= 1``.
      accountant: ``"rdp"`` (default, conservative) or ``"pld"`` (tighter, so it returns
        a smaller noise multiplier for the same budget).

    Returns:
      ``noise_multiplier`` such that ``epsilon_for(dp_sgd_event(...), delta, accountant)``
      is ``<= target_epsilon`` and ``>= (1 - MAX_RELATIVE_SLACK) * target_epsilon``.

    Raises:
      ValueError: if an argument is outside its allowed range (before any compute), or if
        the target needs a noise multiplier outside [1e-3, 1e6].
      RuntimeError: if the calibrated value misses the 1 % window (not observed).

    **Formal guarantees**

    - Bound: with the returned ``noise_multiplier``, ``steps`` Poisson-sampled Gaussian
      releases are ``(target_epsilon, delta)``-DP by the chosen accountant (the result is
      re-checked with that accountant before it is returned).
    - Relation: add/remove-one.
    - Unit: the unit of the plan that uses the noise multiplier (example or client).
    - Not protected: calibration itself touches no data, but the guarantee holds only for
      the mechanism of :func:`fedpriv.privacy.dp_sgd_event` run with these exact
      ``sampling_rate`` and ``steps``; running more steps voids it.

    Example:
      >>> sigma = calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5,
      ...                                    sampling_rate=1.0, steps=1)
      >>> round(sigma, 3)
      4.045
    """
    target_epsilon = _validation.check_epsilon(target_epsilon, "target_epsilon")
    delta = _validation.check_delta(delta)
    sampling_rate = _validation.check_sampling_rate(sampling_rate)
    steps = _validation.check_steps(steps)
    accountant = _validation.check_choice(accountant, "accountant", accountant_lib.ACCOUNTANTS)

    def make_event(noise_multiplier: float) -> dp_accounting.DpEvent:
        return events_lib.dp_sgd_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps)

    return _calibrate(make_event, target_epsilon=target_epsilon, delta=delta, accountant=accountant)


def calibrate_tiers(
    *,
    budgets: Mapping[str, float],
    delta: float,
    sampling_rates: Mapping[str, float] | float,
    steps: Mapping[str, int] | int,
    accountant: accountant_lib.AccountantName = "rdp",
) -> dict[str, float]:
    """One noise multiplier per privacy tier, each meeting that tier's own budget.

    Each tier is calibrated with :func:`calibrate_noise_multiplier` for its budget,
    sampling rate and steps. Tiers that share a sampling rate and a number of steps then
    get noise multipliers that never decrease as the budget gets stricter: where
    calibration's 1e-5 tolerance would put a stricter tier a hair below a looser one, the
    stricter tier gets the looser tier's (larger) value, which only adds protection.

    Args:
      budgets: ``{tier: target epsilon}``, each finite and > 0; its keys name the tiers.
      delta: target delta for every tier, in (0, 1).
      sampling_rates: ``{tier: Poisson sampling rate}`` with the same keys, or one rate
        for all tiers, in (0, 1].
      steps: ``{tier: releases}`` with the same keys, or one count for all, ``>= 1``.
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      ``{tier: noise multiplier}`` in the order of ``budgets``.

    Raises:
      ValueError: if the mappings are empty or disagree on the tiers, or a value is out of
        range (the message names the tier); checked before any compute.

    **Formal guarantees**

    - Bound: with its noise multiplier, tier ``t``'s event
      (``tier_events(...)[t]``) is ``(budgets[t], delta)``-DP under ``accountant``,
      within 1 % below the budget unless raised for monotonicity as described above.
    - Relation: add/remove-one record of the tier.
    - Unit: one record (or client) of the tier.
    - Not protected: tier membership (assumed public); a person in several tiers; the
      guarantee of a tier holds only if its records are clipped and noised with that
      tier's effective noise multiplier and sampled at that tier's rate.

    Example:
      >>> sigmas = calibrate_tiers(budgets={"strict": 1.0, "standard": 8.0}, delta=1e-5,
      ...                          sampling_rates=1.0, steps=10)
      >>> sigmas["strict"] > sigmas["standard"]
      True

    References:
      Boenisch, Muehl, Dziedzic, Rinberg, Papernot 2023, "Have it your way: Individualized
      Privacy Assignment for DP-SGD", arXiv 2303.17046.
    """
    tiers = events_lib._tier_names(budgets, "budgets")
    targets = {tier: _validation.check_epsilon(budgets[tier], f"budgets[{tier!r}]") for tier in tiers}
    delta = _validation.check_delta(delta)
    rates = events_lib._per_tier(sampling_rates, "sampling_rates", tiers)
    counts = events_lib._per_tier(steps, "steps", tiers)
    rates = {tier: _validation.check_sampling_rate(rates[tier], f"sampling_rates[{tier!r}]") for tier in tiers}
    counts = {tier: _validation.check_steps(counts[tier], f"steps[{tier!r}]") for tier in tiers}
    accountant = _validation.check_choice(accountant, "accountant", accountant_lib.ACCOUNTANTS)
    sigmas = {tier: calibrate_noise_multiplier(target_epsilon=targets[tier], delta=delta, sampling_rate=rates[tier],
                                               steps=counts[tier], accountant=accountant) for tier in tiers}
    for tier in tiers:
        looser = [sigmas[other] for other in tiers
                  if (rates[other], counts[other]) == (rates[tier], counts[tier]) and targets[other] >= targets[tier]]
        sigmas[tier] = max(looser)
    return sigmas


def affordable_rounds(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    steps_per_round: int = 1,
    target_epsilon: float,
    delta: float,
    accountant: accountant_lib.AccountantName = "rdp",
    max_rounds: int = 10**6,
) -> int:
    """The largest number of rounds whose composed epsilon stays within the budget.

    Epsilon grows with the number of rounds, so a galloping search followed by bisection
    finds ``R`` with ``epsilon(R) <= target_epsilon < epsilon(R + 1)``, where ``epsilon(R)``
    accounts ``dp_sgd_event(noise_multiplier, sampling_rate, R * steps_per_round)``. Both
    sides of that inequality are evaluated, so the answer is exact for the accountant used.
    For PLD, the RDP answer (RDP >= PLD) is the starting point of the search.

    Args:
      noise_multiplier: noise stddev / sensitivity, ``>= 0`` (0 affords no round).
      sampling_rate: Poisson sampling rate per step, in (0, 1].
      steps_per_round: releases per round, ``>= 1``.
      target_epsilon: privacy budget, finite and > 0.
      delta: target delta, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``.
      max_rounds: search cap, ``>= 1``; if ``max_rounds`` rounds fit, it is returned
        (a lower bound on what the budget affords).

    Returns:
      The number of rounds, ``0 <= R <= max_rounds`` (0 when one round already exceeds).

    Raises:
      ValueError: if an argument is outside its allowed range (before any compute).

    **Formal guarantees**

    - Bound: running at most the returned number of rounds with these parameters is
      ``(target_epsilon, delta)``-DP under ``accountant``; one more round is not (unless
      ``max_rounds`` was reached).
    - Relation: add/remove-one.
    - Unit: the unit of the plan (example or client).
    - Not protected: as for :func:`fedpriv.privacy.dp_sgd_event`; choosing when to stop
      from private data (e.g. an unnoised validation loss) is not accounted.

    Example:
      >>> affordable_rounds(noise_multiplier=2.0, sampling_rate=1.0, target_epsilon=35.0818,
      ...                   delta=1e-5)
      100
    """
    noise_multiplier = _validation.check_noise_multiplier(noise_multiplier)
    sampling_rate = _validation.check_sampling_rate(sampling_rate)
    steps_per_round = _validation.check_steps(steps_per_round, "steps_per_round")
    target_epsilon = _validation.check_epsilon(target_epsilon, "target_epsilon")
    delta = _validation.check_delta(delta)
    accountant = _validation.check_choice(accountant, "accountant", accountant_lib.ACCOUNTANTS)
    max_rounds = _validation.check_steps(max_rounds, "max_rounds")

    def fits(rounds: int, name: str) -> bool:
        event = events_lib.dp_sgd_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate,
                                        steps=rounds * steps_per_round)
        return accountant_lib.epsilon_for(event, delta=delta, accountant=name) <= target_epsilon

    def search(name: str, start: int) -> int:
        # Invariant: fits(low) (0 rounds always fit) and not fits(high), or high = max_rounds + 1.
        if start >= 1 and not fits(start, name):
            low, high = 0, start
        else:
            low, stride = start, max(1, start // 4)
            while True:
                candidate = min(low + stride, max_rounds)
                if candidate == low:
                    return low  # max_rounds fits
                if not fits(candidate, name):
                    high = candidate
                    break
                low, stride = candidate, 2 * stride
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle, name) else (low, middle)
        return low

    rounds = search("rdp", 0)
    if accountant == "pld":
        # RDP >= PLD: every round count affordable under RDP is affordable under PLD.
        rounds = search("pld", rounds)
    logger.info("affordable rounds: %d (noise_multiplier %g, sampling_rate %g, target %g, delta %g, %s)",
                rounds, noise_multiplier, sampling_rate, target_epsilon, delta, accountant)
    return rounds
