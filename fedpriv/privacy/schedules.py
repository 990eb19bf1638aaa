"""Noise schedules: a noise multiplier per round, as a small pure function (DESIGN §4).

Each schedule is a frozen, keyword-only config that validates on construction and is
called as ``schedule(round_index) -> noise_multiplier`` (round 0 is the first round);
``schedule.sequence(rounds)`` gives the first ``rounds`` values. Noise multipliers are
always finite and > 0: a schedule whose parameters would take it to zero or below is
refused on construction, before any accounting (a round without noise has no privacy;
"no DP" is its own choice, ``defense: none``, never a schedule value).

Kinds (:func:`make_schedule` builds any of them by name):

- ``"constant"``: ``noise_multiplier`` every round.
- ``"linear"``: from ``start`` at round 0 to ``end`` at round ``rounds - 1``, then ``end``.
- ``"exponential"``: ``start * rate ** round_index``.
- ``"step"``: ``start * factor ** (round_index // every)``.
- ``"budget_aware"``: the shape of another schedule (its ``profile``) scaled so that the
  whole planned run spends exactly a total epsilon (within 1 % below it).

A schedule's privacy cost is that of :func:`schedule_event`, the composition of its
rounds (:func:`fedpriv.privacy.heterogeneous_event`); the privacy ledger
(:class:`fedpriv.privacy.PrivacyLedger`) accounts what actually ran.

References:
  Yu, Liu, Pu, Gursoy, Truex 2019, "Differentially Private Model Publishing for Deep
  Learning", arXiv 1904.02200 (time-based, exponential and step decay of the noise).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping

import dp_accounting

from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import calibration
from fedpriv.privacy import events as events_lib

logger = logging.getLogger(__name__)

SCHEDULE_KINDS: tuple[str, ...] = ("constant", "linear", "exponential", "step", "budget_aware")


def _check_round_index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"round_index must be an integer >= 0, got {value!r}")
    return int(value)


def _noise_parameter(value: object, name: str) -> float:
    """A schedule parameter that is itself a noise multiplier: finite and > 0."""
    return _validation.check_positive(value, name)


class NoiseSchedule:
    """Base of the noise schedules: ``schedule(round_index) -> noise_multiplier``.

    Subclasses are frozen dataclasses that implement ``_value(round_index)``.

    **Formal guarantees**

    - Bound: none by itself; ``R`` rounds of it cost what :func:`schedule_event` accounts.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: parameters tuned on private data; rounds run with other values.
    """

    def _value(self, round_index: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, round_index: int) -> float:
        """The noise multiplier of round ``round_index`` (0-based), finite and > 0.

        Raises:
          ValueError: if ``round_index`` is not an integer >= 0, or the value at that round
            is not a finite number > 0 (e.g. an exponential decay underflowing to 0).
        """
        round_index = _check_round_index(round_index)
        value = float(self._value(round_index))
        if not (value > 0.0 and math.isfinite(value)):
            raise ValueError(f"noise_multiplier at round_index={round_index} must be a finite number > 0, "
                             f"got {value!r} from {self!r}")
        return value

    def sequence(self, rounds: int) -> tuple[float, ...]:
        """The noise multipliers of rounds ``0 .. rounds - 1``.

        Raises:
          ValueError: if ``rounds`` is not an integer >= 1 (an empty sequence has no
            privacy statement), or a value is not finite and > 0.
        """
        rounds = _validation.check_steps(rounds, "rounds")
        return tuple(self(round_index) for round_index in range(rounds))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstantSchedule(NoiseSchedule):
    """The same noise multiplier every round.

    Attributes:
      noise_multiplier: finite and > 0.

    **Formal guarantees**

    - Bound: none by itself; ``R`` rounds of it cost what :func:`schedule_event` accounts.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: parameters tuned on private data; rounds run with other values.

    Example:
      >>> ConstantSchedule(noise_multiplier=1.1).sequence(3)
      (1.1, 1.1, 1.1)
    """

    noise_multiplier: float

    def __post_init__(self):
        object.__setattr__(self, "noise_multiplier", _noise_parameter(self.noise_multiplier, "noise_multiplier"))

    def _value(self, round_index: int) -> float:
        return self.noise_multiplier


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearDecaySchedule(NoiseSchedule):
    """A straight line from ``start`` (round 0) to ``end`` (round ``rounds - 1``), then ``end``.

    ``sigma(r) = start + (end - start) * min(r, rounds - 1) / (rounds - 1)`` (``start``
    if ``rounds == 1``). ``end < start`` decays the noise; ``end > start`` ramps it up.

    Attributes:
      start: noise multiplier of round 0, finite and > 0.
      end: noise multiplier of the last planned round, finite and > 0 (a line that
        reaches 0 or goes below is refused: those rounds would have no privacy).
      rounds: planned rounds, ``>= 1``.

    **Formal guarantees**

    - Bound: none by itself; ``R`` rounds of it cost what :func:`schedule_event` accounts.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: parameters tuned on private data; rounds run with other values.

    Example:
      >>> schedule = LinearDecaySchedule(start=2.0, end=0.8, rounds=100)
      >>> schedule(0), round(schedule(33), 6), schedule(99), schedule(150)
      (2.0, 1.6, 0.8, 0.8)
    """

    start: float
    end: float
    rounds: int

    def __post_init__(self):
        object.__setattr__(self, "start", _noise_parameter(self.start, "start"))
        object.__setattr__(self, "end", _noise_parameter(self.end, "end"))
        object.__setattr__(self, "rounds", _validation.check_steps(self.rounds, "rounds"))

    def _value(self, round_index: int) -> float:
        if self.rounds == 1:
            return self.start
        fraction = min(round_index, self.rounds - 1) / (self.rounds - 1)
        return self.start + (self.end - self.start) * fraction


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExponentialDecaySchedule(NoiseSchedule):
    """``sigma(r) = start * rate ** r``: the noise shrinks by the factor ``rate`` every round.

    Attributes:
      start: noise multiplier of round 0, finite and > 0.
      rate: factor per round, finite and > 0 (``< 1`` decays, ``> 1`` grows; 0 or a
        negative rate would give rounds without noise or a negative noise multiplier).

    **Formal guarantees**

    - Bound: none by itself; ``R`` rounds of it cost what :func:`schedule_event` accounts.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: parameters tuned on private data; rounds run with other values.

    Example:
      >>> schedule = ExponentialDecaySchedule(start=2.0, rate=0.5)
      >>> schedule.sequence(4)
      (2.0, 1.0, 0.5, 0.25)
    """

    start: float
    rate: float

    def __post_init__(self):
        object.__setattr__(self, "start", _noise_parameter(self.start, "start"))
        object.__setattr__(self, "rate", _validation.check_positive(self.rate, "rate"))

    def _value(self, round_index: int) -> float:
        return self.start * self.rate**round_index


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSchedule(NoiseSchedule):
    """``sigma(r) = start * factor ** (r // every)``: piecewise constant, one step every ``every`` rounds.

    Attributes:
      start: noise multiplier of rounds ``0 .. every - 1``, finite and > 0.
      factor: factor applied at each step, finite and > 0.
      every: rounds between steps, ``>= 1``.

    **Formal guarantees**

    - Bound: none by itself; ``R`` rounds of it cost what :func:`schedule_event` accounts.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: parameters tuned on private data; rounds run with other values.

    Example:
      >>> StepSchedule(start=2.0, factor=0.5, every=2).sequence(5)
      (2.0, 2.0, 1.0, 1.0, 0.5)
    """

    start: float
    factor: float
    every: int

    def __post_init__(self):
        object.__setattr__(self, "start", _noise_parameter(self.start, "start"))
        object.__setattr__(self, "factor", _validation.check_positive(self.factor, "factor"))
        object.__setattr__(self, "every", _validation.check_steps(self.every, "every"))

    def _value(self, round_index: int) -> float:
        return self.start * self.factor ** (round_index // self.every)


_PROFILE_KINDS: tuple[str, ...] = ("constant", "linear", "exponential", "step")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetAwareSchedule(NoiseSchedule):
    """A profile's shape, scaled so the planned run spends ``target_epsilon`` in total.

    ``sigma(r) = scale * profile(r) / max_{r' < rounds} profile(r')`` for the planned rounds
    ``0 .. rounds - 1``: only the profile's relative shape matters, and :attr:`scale` is
    the largest noise multiplier of the run. The scale is the smallest one (Brent's
    method, as in :func:`fedpriv.privacy.calibrate_noise_multiplier`) with which the
    composed epsilon of all planned rounds is ``<= target_epsilon``; it is found on
    construction, with ``accountant``, and lands within 1 % below the target. A constant
    profile gives ``calibrate_noise_multiplier``'s noise multiplier.

    Cost: one accounting of the whole run per probe (a few dozen probes). With full
    participation (``sampling_rate == 1``) a probe is one Gaussian, milliseconds with RDP
    and 0.1-2 s with PLD; with sampling and a profile that changes every round, a probe
    costs one RDP evaluation (~20-60 ms) or one PLD convolution (~0.25 s) per round.

    Attributes:
      target_epsilon: total budget of the planned run, finite and > 0.
      delta: target delta, in (0, 1).
      rounds: planned rounds, ``>= 1``; calling the schedule past them raises.
      sampling_rate: Poisson sampling rate of the unit per step, in (0, 1].
      steps_per_round: releases per round, ``>= 1``.
      profile: the shape, a constant, linear, exponential or step schedule, or a
        mapping ``{"kind": ..., **options}`` for :func:`make_schedule`.
      accountant: ``"rdp"`` or ``"pld"``, the accountant the budget is met under.
      scale: (computed) the largest noise multiplier of the run.
      epsilon: (computed) the composed epsilon of the planned run under ``accountant``.

    Raises:
      ValueError: on construction, if a field is outside its allowed range (before any
        compute), or the budget needs a scale outside [1e-3, 1e6].

    **Formal guarantees**

    - Bound: running rounds ``0 .. rounds - 1`` with these noise multipliers (each
      ``steps_per_round`` Poisson-sampled Gaussian releases at ``sampling_rate``) is
      ``(target_epsilon, delta)``-DP under ``accountant``.
    - Relation: add/remove-one.
    - Unit: the unit of the plan that uses the schedule (example or client).
    - Not protected: rounds past ``rounds`` (refused); a run that deviates from the
      planned sampling rate or steps; a profile tuned on private data.

    Example:
      >>> schedule = BudgetAwareSchedule(target_epsilon=8.0, delta=1e-5, rounds=100,
      ...     sampling_rate=1.0, profile=LinearDecaySchedule(start=2.0, end=0.8, rounds=100))
      >>> 0.99 * 8.0 <= schedule.epsilon <= 8.0
      True
      >>> round(schedule(99) / schedule(0), 6)
      0.4

    References:
      Yu, Liu, Pu, Gursoy, Truex 2019, "Differentially Private Model Publishing for Deep
      Learning", arXiv 1904.02200 (schedules that spend a fixed total budget).
    """

    target_epsilon: float
    delta: float
    rounds: int
    sampling_rate: float
    steps_per_round: int = 1
    profile: NoiseSchedule = dataclasses.field(default_factory=lambda: ConstantSchedule(noise_multiplier=1.0))
    accountant: str = "rdp"
    scale: float = dataclasses.field(init=False, compare=False)
    epsilon: float = dataclasses.field(init=False, compare=False)
    _relative: tuple[float, ...] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("target_epsilon", _validation.check_epsilon(self.target_epsilon, "target_epsilon"))
        set_("delta", _validation.check_delta(self.delta))
        set_("rounds", _validation.check_steps(self.rounds, "rounds"))
        set_("sampling_rate", _validation.check_sampling_rate(self.sampling_rate))
        set_("steps_per_round", _validation.check_steps(self.steps_per_round, "steps_per_round"))
        set_("accountant", _validation.check_choice(self.accountant, "accountant", accountant_lib.ACCOUNTANTS))
        profile = self.profile
        if isinstance(profile, Mapping):
            options = dict(profile)
            kind = options.pop("kind", None)
            if kind not in _PROFILE_KINDS:
                raise ValueError(f"profile['kind'] must be one of {_PROFILE_KINDS}, got {kind!r}")
            profile = make_schedule(kind, **options)
        if not isinstance(profile, (ConstantSchedule, LinearDecaySchedule, ExponentialDecaySchedule, StepSchedule)):
            raise ValueError(f"profile must be a constant, linear, exponential or step schedule (or a mapping "
                             f"with 'kind' one of {_PROFILE_KINDS}), got {profile!r}")
        set_("profile", profile)
        shape = profile.sequence(self.rounds)
        peak = max(shape)
        set_("_relative", tuple(value / peak for value in shape))

        def make_event(scale: float) -> dp_accounting.DpEvent:
            return events_lib.heterogeneous_event([scale * weight for weight in self._relative], self.sampling_rate,
                                                  steps_per_round=self.steps_per_round)

        scale = calibration._calibrate(make_event, target_epsilon=self.target_epsilon, delta=self.delta,
                                       accountant=self.accountant, what="noise scale")
        set_("scale", scale)
        set_("epsilon", accountant_lib.epsilon_for(make_event(scale), delta=self.delta, accountant=self.accountant))

    def _value(self, round_index: int) -> float:
        if round_index >= self.rounds:
            raise ValueError(f"round_index must be < rounds={self.rounds} (the budget covers rounds 0 .. "
                             f"{self.rounds - 1}), got {round_index}")
        return self.scale * self._relative[round_index]


_SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "constant": ConstantSchedule,
    "linear": LinearDecaySchedule,
    "exponential": ExponentialDecaySchedule,
    "step": StepSchedule,
    "budget_aware": BudgetAwareSchedule,
}


def make_schedule(kind: str, **options) -> NoiseSchedule:
    """Builds a noise schedule by name (the entry point for configs).

    Args:
      kind: one of :data:`SCHEDULE_KINDS`.
      **options: the fields of that kind's config (see the module docstring).

    Returns:
      The schedule.

    Raises:
      ValueError: if ``kind`` is unknown, an option is unknown or missing (the message
        lists the allowed ones), or an option is outside its allowed range (the message
        names it) -- all before any accounting.

    **Formal guarantees**

    - Bound: none by itself, except for ``"budget_aware"`` (see
      :class:`BudgetAwareSchedule`); a schedule's cost is that of :func:`schedule_event`.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: a schedule chosen from private data.

    Example:
      >>> make_schedule("step", start=2.0, factor=0.5, every=10)(25)
      0.5
    """
    kind = _validation.check_choice(kind, "kind", SCHEDULE_KINDS)
    config = _SCHEDULES[kind]
    fields = [field for field in dataclasses.fields(config) if field.init]
    allowed = [field.name for field in fields]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options {unknown} are not options of a {kind!r} schedule; allowed: {allowed}")
    missing = [field.name for field in fields if field.name not in options
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"options {missing} are required for a {kind!r} schedule; allowed: {allowed}")
    return config(**options)


def schedule_event(schedule: NoiseSchedule, *, rounds: int, sampling_rate: float,
                   steps_per_round: int = 1) -> dp_accounting.DpEvent:
    """The event of running ``schedule`` for ``rounds`` rounds (see :func:`heterogeneous_event`).

    Args:
      schedule: a :class:`NoiseSchedule`.
      rounds: rounds run, ``>= 1``.
      sampling_rate: Poisson sampling rate of the unit per step, in (0, 1].
      steps_per_round: releases per round, ``>= 1``.

    Returns:
      ``heterogeneous_event(schedule.sequence(rounds), sampling_rate, steps_per_round=...)``.

    Raises:
      ValueError: if an argument is outside its allowed range.

    **Formal guarantees**

    - Bound: none by itself; an accountant composes the rounds.
    - Relation: add/remove-one. Unit: the plan's (example or client).
    - Not protected: as for :func:`fedpriv.privacy.heterogeneous_event`.

    Example:
      >>> event = schedule_event(ConstantSchedule(noise_multiplier=2.0), rounds=100, sampling_rate=1.0)
      >>> round(accountant_lib.epsilon_for(event, delta=1e-5, accountant="rdp"), 4)
      35.0818
    """
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule (see make_schedule), got {schedule!r}")
    return events_lib.heterogeneous_event(schedule.sequence(rounds), sampling_rate, steps_per_round=steps_per_round)
