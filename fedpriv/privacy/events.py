"""``dp_accounting`` events for the mechanisms fedpriv runs (DESIGN §4).

An event describes *what was released*, independently of how it is accounted: the
accountant (RDP or PLD, see :mod:`fedpriv.privacy.accountant`) turns it into an
``(epsilon, delta)`` statement. Plans in :mod:`fedpriv.defenses` build their event here,
so the mechanism that runs and the mechanism that is accounted for are one object.

Builders: :func:`dp_sgd_event` (example level), :func:`dp_fedavg_event` (client level),
:func:`heterogeneous_event` (a noise multiplier per round, e.g. from a noise schedule,
:mod:`fedpriv.privacy.schedules`) and :func:`tier_events` (one event per privacy tier).

Neighbouring relation. All events are meant for the add/remove-one relation
(``dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE``): two datasets are neighbours
when one is the other plus one record. Under it, the clipped sum of per-record
contributions has L2 sensitivity ``l2_clip_norm`` and Poisson subsampling amplifies
privacy as analysed by Mironov et al. (2019). We do not use replace-one: under
replace-one the sensitivity of a clipped sum is ``2 * l2_clip_norm``; dp-accounting
0.6.0's PLD accountant applies that factor 2 (sigma 1 -> epsilon 9.9973 at delta 1e-5)
but its RDP accountant does not (sigma 1 -> 4.7285), so the two accountants would
disagree and RDP would under-report (shared/reference/README.md, "Replace-one pitfall").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from collections.abc import Mapping

import dp_accounting

from fedpriv.privacy import _validation


def _release(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    """One Gaussian release, Poisson-sampled unless every unit takes part (``sampling_rate == 1``)."""
    release: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        release = dp_accounting.PoissonSampledDpEvent(sampling_rate, release)
    return release


def dp_sgd_event(*, noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    """The event of ``steps`` Poisson-subsampled Gaussian releases (DP-SGD, DP-FedAvg).

    Builds ``SelfComposed(PoissonSampled(sampling_rate, Gaussian(noise_multiplier)), steps)``.
    With ``sampling_rate == 1`` every record takes part in every step, so there is no
    sampling to amplify privacy and the event is ``SelfComposed(Gaussian, steps)``
    (the two are the same mechanism; leaving the wrapper out keeps the PLD accountant on
    its exact Gaussian path).

    Args:
      noise_multiplier: noise standard deviation divided by the L2 sensitivity of the
        released sum (``>= 0``; 0 means no noise and an infinite epsilon).
      sampling_rate: probability that a record is included in one step, drawn
        independently per record and per step (Poisson sampling), in (0, 1].
      steps: number of releases composed, ``>= 1``.

    Returns:
      A ``dp_accounting.DpEvent``.

    Raises:
      ValueError: if an argument is outside its allowed range; the message names it.

    **Formal guarantees**

    - Bound: none by itself; an accountant turns the event into ``(epsilon, delta)``.
      The event is faithful only if every step clips each record's contribution to L2
      norm ``C``, adds ``N(0, (noise_multiplier * C)^2)`` to every coordinate of the
      clipped SUM, and includes each record independently with probability
      ``sampling_rate`` (Poisson sampling).
    - Relation: add/remove-one record (see the module docstring for why not replace-one).
    - Unit: whatever one clipped contribution is (an example for DP-SGD, a client for
      DP-FedAvg); the plan that builds the event states it.
    - Not protected: shuffling or fixed-size batches (not Poisson sampling) are not
      what this event describes; several contributions of one person count as several
      units; anything released outside these ``steps`` releases.

    Example:
      >>> event = dp_sgd_event(noise_multiplier=1.1, sampling_rate=256 / 60000, steps=10)
      >>> type(event).__name__
      'SelfComposedDpEvent'

    References:
      Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv 1607.00133.
      Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian
      Mechanism", arXiv 1908.10530.
    """
    noise_multiplier = _validation.check_noise_multiplier(noise_multiplier)
    sampling_rate = _validation.check_sampling_rate(sampling_rate)
    steps = _validation.check_steps(steps)
    return dp_accounting.SelfComposedDpEvent(_release(noise_multiplier, sampling_rate), steps)


def dp_fedavg_event(*, noise_multiplier: float, client_sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """The client-level event of ``rounds`` rounds of DP-FedAvg.

    Each round the server samples every client independently with probability
    ``client_sampling_rate``, clips each sampled client's update to L2 norm ``C``, sums the
    clipped updates and adds ``N(0, (noise_multiplier * C)^2)`` to every coordinate of the
    SUM: one Poisson-sampled Gaussian release per round. The event is
    ``dp_sgd_event(noise_multiplier, client_sampling_rate, rounds)``; with
    ``client_sampling_rate == 1`` (every hospital every round, the cross-silo case) there is
    no sampling wrapper and ``rounds`` releases with ``sigma`` are exactly one Gaussian
    release with ``sigma / sqrt(rounds)``.

    Args:
      noise_multiplier: noise stddev / L2 clip norm of one client's update, ``>= 0``.
      client_sampling_rate: probability that a client takes part in a round, in (0, 1].
      rounds: number of rounds, ``>= 1``.

    Returns:
      A ``dp_accounting.DpEvent``.

    Raises:
      ValueError: if an argument is outside its allowed range; the message names it.

    **Formal guarantees**

    - Bound: none by itself; an accountant turns it into ``(epsilon, delta)``. Faithful only
      if the clip, the noise on the clipped SUM and the Poisson client sampling happen as
      described above (the division by a public constant comes after the noise).
    - Relation: add/remove-one client.
    - Unit: one client (a whole hospital, all of its records).
    - Not protected: which clients were sampled when the server learns it (e.g. a
      participation list); fixed-size cohorts instead of Poisson sampling; anything a
      client releases outside the noised sum (e.g. unnoised metrics).

    Example:
      >>> event = dp_fedavg_event(noise_multiplier=2.0, client_sampling_rate=1.0, rounds=100)
      >>> event == dp_sgd_event(noise_multiplier=2.0, sampling_rate=1.0, steps=100)
      True

    References:
      McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent
      Language Models", arXiv 1710.06963 (DP-FedAvg, client-level DP).
    """
    noise_multiplier = _validation.check_noise_multiplier(noise_multiplier)
    client_sampling_rate = _validation.check_sampling_rate(client_sampling_rate, "client_sampling_rate")
    rounds = _validation.check_steps(rounds, "rounds")
    return dp_sgd_event(noise_multiplier=noise_multiplier, sampling_rate=client_sampling_rate, steps=rounds)


def _sequence(value: object, name: str) -> tuple:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {value!r}")
    values = tuple(value)
    if not values:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got an empty sequence")
    return values


def heterogeneous_event(
    noise_multipliers: Iterable[float],
    sampling_rate: float | Iterable[float],
    *,
    steps_per_round: int = 1,
) -> dp_accounting.DpEvent:
    """The event of rounds whose noise multiplier (and sampling rate) change per round.

    Round ``r`` releases ``steps_per_round`` Poisson-sampled Gaussians with noise
    multiplier ``noise_multipliers[r]`` and sampling rate ``sampling_rate`` (or
    ``sampling_rate[r]``). The event is the ``ComposedDpEvent`` of one event per round,
    with runs of equal consecutive rounds grouped into one ``SelfComposedDpEvent`` (the
    same mechanism; grouping lets the PLD accountant self-compose instead of convolving
    round by round). A sequence with a single run is exactly
    ``dp_sgd_event(noise_multiplier, sampling_rate, rounds * steps_per_round)``.

    Args:
      noise_multipliers: one noise multiplier per round, each ``>= 0``; non-empty.
      sampling_rate: Poisson sampling rate of the unit, in (0, 1]; one for all rounds or
        one per round.
      steps_per_round: releases per round (local DP-SGD steps for example-level DP; 1 for
        DP-FedAvg), ``>= 1``.

    Returns:
      A ``dp_accounting.DpEvent``.

    Raises:
      ValueError: if the sequence is empty, has a bad entry (named with its index), or
        the per-round sampling rates do not match it in length.

    **Formal guarantees**

    - Bound: none by itself; an accountant composes the rounds (adaptive composition:
      the noise of a round may be chosen from public information and earlier releases,
      never from the private data directly).
    - Relation: add/remove-one.
    - Unit: whatever one clipped contribution is (example or client), as for
      :func:`dp_sgd_event`.
    - Not protected: a noise multiplier chosen from private data without accounting for
      that choice (e.g. from an unnoised validation loss); rounds that ran but are missing
      from ``noise_multipliers``.

    Example:
      >>> event = heterogeneous_event([2.0, 2.0, 1.5], 1.0)
      >>> [(type(e.event).__name__, e.event.noise_multiplier, e.count) for e in event.events]
      [('GaussianDpEvent', 2.0, 2), ('GaussianDpEvent', 1.5, 1)]

    References:
      Yu, Liu, Pu, Gursoy, Truex 2019, "Differentially Private Model Publishing for Deep
      Learning", arXiv 1904.02200 (noise schedules under composition).
      Mironov 2017, "Renyi Differential Privacy", arXiv 1702.07476 (composition).
    """
    sigmas = _sequence(noise_multipliers, "noise_multipliers")
    sigmas = tuple(_validation.check_noise_multiplier(value, f"noise_multipliers[{index}]")
                   for index, value in enumerate(sigmas))
    if isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, bool):
        rates = (_validation.check_sampling_rate(sampling_rate),) * len(sigmas)
    else:
        rates = _sequence(sampling_rate, "sampling_rate")
        if len(rates) != len(sigmas):
            raise ValueError(f"sampling_rate must be one number or one per round ({len(sigmas)} rounds), "
                             f"got {len(rates)} rates")
        rates = tuple(_validation.check_sampling_rate(value, f"sampling_rate[{index}]")
                      for index, value in enumerate(rates))
    steps_per_round = _validation.check_steps(steps_per_round, "steps_per_round")
    runs: list[list] = []
    for sigma, rate in zip(sigmas, rates):
        release = _release(sigma, rate)
        if runs and runs[-1][0] == release:
            runs[-1][1] += steps_per_round
        else:
            runs.append([release, steps_per_round])
    events = [dp_accounting.SelfComposedDpEvent(release, count) for release, count in runs]
    return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


def _per_tier(value: object, name: str, tiers: tuple[str, ...]) -> dict:
    """``value`` as ``{tier: value}``: a mapping with exactly ``tiers`` as keys, or one value for all."""
    if isinstance(value, Mapping):
        if set(value) != set(tiers):
            raise ValueError(f"{name} must have exactly the tiers {tiers} as keys, got {tuple(value)}")
        return {tier: value[tier] for tier in tiers}
    return {tier: value for tier in tiers}


def _tier_names(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{name} must be a non-empty mapping from tier name to value, got {value!r}")
    for tier in value:
        if not isinstance(tier, str) or not tier or "." in tier:
            raise ValueError(f"{name} keys must be non-empty tier names without '.', got {tier!r}")
    return tuple(value)


def tier_events(
    *,
    noise_multipliers: Mapping[str, float],
    sampling_rates: Mapping[str, float] | float,
    steps: Mapping[str, int] | int,
) -> dict[str, dp_accounting.DpEvent]:
    """One event per privacy tier: records grouped by the budget they were promised.

    A tier is a set of records (e.g. patients who consented to research use, or records
    with sensitive diagnoses) that gets its own privacy budget. Tiers differ by their
    effective noise multiplier (noise stddev / that tier's clip norm) or by their
    Poisson sampling rate; each tier's guarantee is that of its own sampled Gaussian.

    Args:
      noise_multipliers: ``{tier: noise multiplier}`` (``>= 0``); its keys name the tiers.
      sampling_rates: ``{tier: Poisson sampling rate}`` with the same keys, or one rate
        for every tier, in (0, 1].
      steps: ``{tier: releases}`` with the same keys, or one count for every tier, ``>= 1``.

    Returns:
      ``{tier: dp_sgd_event(...)}`` in the order of ``noise_multipliers``.

    Raises:
      ValueError: if the mappings are empty, their keys differ, or a value is outside its
        range (the message names the tier).

    **Formal guarantees**

    - Bound: each tier's event, accounted, bounds the privacy loss of a record of that
      tier only; there is no single epsilon for the run.
    - Relation: add/remove-one record of the tier.
    - Unit: one record (or one client) of the tier.
    - Not protected: which tier a record belongs to (assumed public, or chosen without
      looking at the data); a person with records in several tiers.

    Example:
      >>> events = tier_events(noise_multipliers={"strict": 3.0, "standard": 1.0},
      ...                      sampling_rates=0.01, steps=100)
      >>> sorted(events)
      ['standard', 'strict']

    References:
      Boenisch, Muehl, Dziedzic, Rinberg, Papernot 2023, "Have it your way: Individualized
      Privacy Assignment for DP-SGD", arXiv 2303.17046.
      Jorgensen, Yu, Cormode 2015, "Conservative or Liberal? Personalized Differential
      Privacy", ICDE 2015.
    """
    tiers = _tier_names(noise_multipliers, "noise_multipliers")
    rates = _per_tier(sampling_rates, "sampling_rates", tiers)
    counts = _per_tier(steps, "steps", tiers)
    return {tier: dp_sgd_event(
        noise_multiplier=_validation.check_noise_multiplier(noise_multipliers[tier], f"noise_multipliers[{tier!r}]"),
        sampling_rate=_validation.check_sampling_rate(rates[tier], f"sampling_rates[{tier!r}]"),
        steps=_validation.check_steps(counts[tier], f"steps[{tier!r}]"),
    ) for tier in tiers}


# -- Accounting form ---------------------------------------------------------------------
# The accountant (fedpriv.privacy.accountant) and the ledger (fedpriv.privacy.ledger)
# account an event in one canonical form, so both give bit-identical numbers:
#   1. Poisson-sampled Gaussian releases, in order, with equal consecutive ones grouped;
#   2. all un-sampled Gaussian releases merged into ONE Gaussian with
#      sigma_eff = (sum_i count_i / sigma_i^2)^(-1/2).
# Step 2 is exact, not an approximation: the privacy loss of a Gaussian release with
# noise multiplier sigma is N(1/(2 sigma^2), 1/sigma^2), and sums of independent normals are
# normal, so their composition is the Gaussian with sigma_eff (Dong, Roth, Su 2019,
# arXiv 1905.02383, Cor. 3.3; in RDP, alpha / (2 sigma^2) adds up the same way). Composition
# commutes, so moving these releases to the end changes nothing. It makes a 100-round
# full-participation noise schedule one PLD (1 s) instead of 100 convolutions (14 s).


def _flatten(event: dp_accounting.DpEvent, count: int, leaves: list) -> bool:
    """Appends ``(sampling_rate, noise_multiplier, count)`` per release; False if not a Gaussian tree."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return True
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _flatten(event.event, count * event.count, leaves)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return all(_flatten(inner, count, leaves) for inner in event.events)
    if isinstance(event, dp_accounting.GaussianDpEvent):
        sampling_rate, sigma = 1.0, event.noise_multiplier
    elif (isinstance(event, dp_accounting.PoissonSampledDpEvent)
          and isinstance(event.event, dp_accounting.GaussianDpEvent)):
        sampling_rate, sigma = event.sampling_probability, event.event.noise_multiplier
    else:
        return False
    if count > 0 and sampling_rate > 0:
        leaves.append((float(sampling_rate), float(sigma), int(count)))
    return True


def _merged_gaussian(counts: Mapping[float, int]) -> dp_accounting.DpEvent:
    """The un-sampled Gaussian releases ``{noise_multiplier: count}`` as one event (see above)."""
    if len(counts) == 1:
        ((sigma, count),) = counts.items()
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), count)
    if any(sigma == 0.0 for sigma in counts):
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.0), 1)
    # fsum: exactly rounded, so the result does not depend on the order of the rounds.
    precision = math.fsum(count / sigma**2 for sigma, count in counts.items())
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(precision)), 1)


def _assemble(sampled_runs: list, gaussian_counts: Mapping[float, int]) -> list[dp_accounting.DpEvent]:
    """The parts of the accounting form, in the order they are composed."""
    parts = [dp_accounting.SelfComposedDpEvent(_release(sigma, rate), count)
             for (rate, sigma), count in sampled_runs]
    if gaussian_counts:
        parts.append(_merged_gaussian(gaussian_counts))
    return parts


def _add_release(sampled_runs: list, gaussian_counts: dict, sampling_rate: float, sigma: float, count: int) -> None:
    if sampling_rate >= 1.0:
        gaussian_counts[sigma] = gaussian_counts.get(sigma, 0) + count
    elif sampled_runs and sampled_runs[-1][0] == (sampling_rate, sigma):
        sampled_runs[-1][1] += count
    else:
        sampled_runs.append([(sampling_rate, sigma), count])


def _accounting_form(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """``event`` in the canonical form above; ``event`` itself if it is not made of Gaussians."""
    leaves: list = []
    if not _flatten(event, 1, leaves):
        return event
    sampled_runs: list = []
    gaussian_counts: dict = {}
    for sampling_rate, sigma, count in leaves:
        _add_release(sampled_runs, gaussian_counts, sampling_rate, sigma, count)
    parts = _assemble(sampled_runs, gaussian_counts)
    if not parts:
        return dp_accounting.NoOpDpEvent()
    return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)
