"""A host-side privacy ledger that the training loop updates round by round (DESIGN §4).

The loop asks the ledger *before* each round whether that round still fits the budget,
then records what it actually ran::

    ledger = PrivacyLedger(unit="client", budget_epsilon=8.0, delta=1e-5, accountant="pld")
    for round_index in range(rounds):
        sigma = schedule(round_index)
        if ledger.stop_if_would_exceed(next_round_noise_multiplier=sigma, sampling_rate=q):
            break
        ...  # run the round with noise multiplier sigma
        ledger.record_round(sigma, q)
    metrics.update(ledger.as_dict())

The ledger composes incrementally (one ``dp_accounting`` accountant per accountant name,
kept up to date with the rounds already recorded), in the accounting form of
:mod:`fedpriv.privacy.accountant`, so its epsilon is bit-identical to
``epsilon_for(ledger.event(), ...)`` and a check costs one composition, not one per round.
:class:`fedpriv.privacy.tiered_ledger.TieredLedger` keeps one ledger per privacy tier.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
from collections.abc import Mapping

import dp_accounting

from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import events as events_lib

logger = logging.getLogger(__name__)

_CACHE_SIZE = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class LedgerRound:
    """One recorded round: ``steps`` Poisson-sampled Gaussian releases.

    Attributes:
      noise_multiplier: noise stddev / sensitivity of the released sum, ``>= 0``.
      sampling_rate: Poisson sampling rate of the unit, in (0, 1].
      steps: releases in the round, ``>= 1``.

    Raises:
      ValueError: on construction, if a field is outside its allowed range.

    **Formal guarantees**

    - Bound: none by itself; the ledger composes its rounds.
    - Relation: add/remove-one. Unit: the ledger's.
    - Not protected: a round that ran with other parameters than recorded.
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int = 1

    def __post_init__(self):
        object.__setattr__(self, "noise_multiplier", _validation.check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sampling_rate", _validation.check_sampling_rate(self.sampling_rate))
        object.__setattr__(self, "steps", _validation.check_steps(self.steps))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetExhausted:
    """Why and where a run stopped: the next round would have overspent the budget.

    Attributes:
      round_index: 0-based index of the round that was NOT run (= rounds recorded).
      reason: a sentence for humans and for ``metrics.json``.
      epsilon_spent: epsilon after the rounds that ran.
      epsilon_next: epsilon the refused round would have brought (``> budget_epsilon``).
      budget_epsilon: the budget, finite and > 0.
      delta: the delta both epsilons are stated at, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``.

    **Formal guarantees**

    - Bound: the rounds that ran are ``(epsilon_spent, delta)``-DP with
      ``epsilon_spent <= budget_epsilon`` under ``accountant``.
    - Relation: add/remove-one. Unit: the ledger's unit.
    - Not protected: anything released after the stop.
    """

    round_index: int
    reason: str
    epsilon_spent: float
    epsilon_next: float
    budget_epsilon: float
    delta: float
    accountant: str

    def __post_init__(self):
        if isinstance(self.round_index, bool) or not isinstance(self.round_index, int) or self.round_index < 0:
            raise ValueError(f"round_index must be an integer >= 0, got {self.round_index!r}")
        if not isinstance(self.reason, str) or not self.reason:
            raise ValueError(f"reason must be a non-empty string, got {self.reason!r}")
        _validation.check_epsilon(self.budget_epsilon, "budget_epsilon")
        _validation.check_delta(self.delta)
        _validation.check_choice(self.accountant, "accountant", accountant_lib.ACCOUNTANTS)


def _optional(check, value, name):
    return None if value is None else check(value, name)


class PrivacyLedger:
    """The rounds a run has released so far, with their privacy cost and an optional budget.

    Mutable host-side state (never inside ``jit``): :meth:`record_round` appends a round,
    :meth:`epsilon` / :meth:`delta_for` account everything recorded, :meth:`would_exceed`
    checks the NEXT round against a budget before it is spent, and
    :meth:`stop_if_would_exceed` also records the stop as a :class:`BudgetExhausted`.

    Args:
      unit: the privacy unit, ``"example"`` or ``"client"``.
      budget_epsilon: the default budget of :meth:`would_exceed`, finite and > 0, or
        ``None`` (no budget; then pass one to :meth:`would_exceed`).
      delta: the default delta, in (0, 1), or ``None`` (pass it to each query).
      accountant: the default accountant, ``"rdp"`` (conservative) or ``"pld"``.

    Raises:
      ValueError: if an argument is outside its allowed range.

    **Formal guarantees**

    - Bound: the recorded rounds compose to ``(epsilon(delta), delta)``-DP under the
      chosen accountant (adaptive composition: each round's noise may depend on public
      information and on earlier noisy releases). With the budget checks, the rounds
      recorded are ``(budget_epsilon, delta)``-DP.
    - Relation: add/remove-one.
    - Unit: :attr:`unit`.
    - Not protected: rounds that ran but were not recorded; a noise multiplier or a stop
      decision taken from private data without noise; everything the event of a round
      does not describe (see :func:`fedpriv.privacy.dp_sgd_event`).

    Example:
      >>> ledger = PrivacyLedger(unit="client", budget_epsilon=35.0818, delta=1e-5)
      >>> for _ in range(100):
      ...     ledger.record_round(2.0, 1.0)
      >>> round(ledger.epsilon(), 4)
      35.0818
      >>> ledger.would_exceed(next_round_noise_multiplier=2.0, sampling_rate=1.0)
      True

    References:
      Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv 1607.00133
      (a privacy accountant updated during training).
    """

    def __init__(self, *, unit: str, budget_epsilon: float | None = None, delta: float | None = None,
                 accountant: accountant_lib.AccountantName = "rdp"):
        self._unit = _validation.check_choice(unit, "unit", accountant_lib.UNITS)
        self._budget_epsilon = _optional(_validation.check_epsilon, budget_epsilon, "budget_epsilon")
        self._delta = _optional(_validation.check_delta, delta, "delta")
        self._accountant = _validation.check_choice(accountant, "accountant", accountant_lib.ACCOUNTANTS)
        self._rounds: list[LedgerRound] = []
        # The accounting form (fedpriv.privacy.events): sampled runs (the last one may still
        # grow) and the full-participation releases {noise_multiplier: count}.
        self._sampled_runs: list[list] = []
        self._gaussian_counts: dict[float, int] = {}
        # Per accountant name: [accountant with the closed sampled runs composed, how many].
        self._states: dict[str, list] = {}
        self._epsilons: collections.OrderedDict = collections.OrderedDict()
        self._stop: BudgetExhausted | None = None

    # -- what was recorded ------------------------------------------------------------

    @property
    def unit(self) -> str:
        """The privacy unit, ``"example"`` or ``"client"``."""
        return self._unit

    @property
    def budget_epsilon(self) -> float | None:
        """The default budget, or ``None``."""
        return self._budget_epsilon

    @property
    def delta(self) -> float | None:
        """The default delta, or ``None``."""
        return self._delta

    @property
    def accountant(self) -> str:
        """The default accountant."""
        return self._accountant

    @property
    def rounds(self) -> tuple[LedgerRound, ...]:
        """The recorded rounds, oldest first."""
        return tuple(self._rounds)

    @property
    def rounds_recorded(self) -> int:
        """How many rounds were recorded."""
        return len(self._rounds)

    @property
    def steps_recorded(self) -> int:
        """How many releases were recorded (rounds x steps)."""
        return sum(entry.steps for entry in self._rounds)

    @property
    def stopped(self) -> BudgetExhausted | None:
        """The stop record, or ``None`` while the run may go on."""
        return self._stop

    def record_round(self, noise_multiplier: float, sampling_rate: float, steps: int = 1) -> None:
        """Appends one round that ran: ``steps`` releases with these parameters.

        Args:
          noise_multiplier: the round's noise multiplier, ``>= 0`` (0: epsilon becomes inf).
          sampling_rate: the round's Poisson sampling rate, in (0, 1].
          steps: releases in the round, ``>= 1``.

        Raises:
          ValueError: if an argument is outside its allowed range (nothing is recorded).
          RuntimeError: if the ledger was stopped (the round must not have run).

        **Formal guarantees**

        - Bound: after the call, :meth:`epsilon` includes the round.
        - Relation: add/remove-one. Unit: :attr:`unit`.
        - Not protected: a round that ran with other parameters than recorded.
        """
        entry = LedgerRound(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps)
        if self._stop is not None:
            raise RuntimeError(f"the ledger stopped before round {self._stop.round_index}: {self._stop.reason}")
        self._rounds.append(entry)
        events_lib._add_release(self._sampled_runs, self._gaussian_counts, entry.sampling_rate,
                                entry.noise_multiplier, entry.steps)

    def event(self) -> dp_accounting.DpEvent:
        """The event of the recorded rounds (``NoOpDpEvent`` if none).

        Consecutive equal rounds are grouped (as in
        :func:`fedpriv.privacy.heterogeneous_event`); constant rounds give exactly
        ``dp_sgd_event(noise_multiplier, sampling_rate, steps_recorded)``.
        """
        runs: list[list] = []
        for entry in self._rounds:
            release = events_lib._release(entry.noise_multiplier, entry.sampling_rate)
            if runs and runs[-1][0] == release:
                runs[-1][1] += entry.steps
            else:
                runs.append([release, entry.steps])
        parts = [dp_accounting.SelfComposedDpEvent(release, count) for release, count in runs]
        if not parts:
            return dp_accounting.NoOpDpEvent()
        return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)

    # -- checkpoints ------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        """The recorded rounds and the stop record (``fedpriv.federated.checkpoints.HostParty``)."""
        return {"rounds": [[entry.noise_multiplier, entry.sampling_rate, entry.steps] for entry in self._rounds],
                "stop": None if self._stop is None else dataclasses.asdict(self._stop)}

    def restore_state(self, state: Mapping) -> None:
        """Replays a :meth:`checkpoint_state` into this fresh ledger.

        The accounting composes the same releases in the same order as the ledger that was
        checkpointed, so every epsilon it gives is bit-identical to that ledger's.

        Raises:
          RuntimeError: if this ledger has recorded rounds already.
          ValueError: if a recorded round is outside its allowed range.
        """
        if self._rounds or self._stop is not None:
            raise RuntimeError("restore_state needs a fresh ledger; this one has recorded rounds")
        for noise_multiplier, sampling_rate, steps in state["rounds"]:
            self.record_round(noise_multiplier, sampling_rate, steps)
        self._stop = None if state["stop"] is None else BudgetExhausted(**state["stop"])

    # -- accounting -------------------------------------------------------------------

    def _resolve(self, delta, accountant) -> tuple[float, str]:
        delta = self._delta if delta is None else delta
        if delta is None:
            raise ValueError("delta must be given (in the open interval (0, 1)): the ledger has no default delta")
        delta = _validation.check_delta(delta)
        accountant = self._accountant if accountant is None else accountant
        return delta, _validation.check_choice(accountant, "accountant", accountant_lib.ACCOUNTANTS)

    def _composed(self, accountant: str, sampled_runs: list, gaussian_counts: Mapping[float, int]):
        """An accountant holding ``sampled_runs`` + ``gaussian_counts`` in the accounting form.

        ``sampled_runs`` extends the ledger's own runs (same closed runs, then more), so
        the closed runs come from the incremental state and only the rest is composed.
        """
        state = self._states.setdefault(accountant, [accountant_lib.make_accountant(accountant), 0])
        closed = len(self._sampled_runs) - 1
        while state[1] < closed:
            (rate, sigma), count = self._sampled_runs[state[1]]
            state[0].compose(events_lib._assemble([[(rate, sigma), count]], {})[0])
            state[1] += 1
        composed = copy.deepcopy(state[0])
        for part in events_lib._assemble(sampled_runs[state[1]:], gaussian_counts):
            composed.compose(part)
        return composed

    def _epsilon(self, delta: float, accountant: str, extra: LedgerRound | None = None) -> float:
        key = (tuple(self._rounds) + ((extra,) if extra else ()), delta, accountant)
        if key in self._epsilons:
            self._epsilons.move_to_end(key)
            return self._epsilons[key]
        if not key[0]:
            return 0.0
        sampled_runs = [list(run) for run in self._sampled_runs]
        gaussian_counts = dict(self._gaussian_counts)
        if extra is not None:
            events_lib._add_release(sampled_runs, gaussian_counts, extra.sampling_rate, extra.noise_multiplier,
                                    extra.steps)
        epsilon = float(self._composed(accountant, sampled_runs, gaussian_counts).get_epsilon(delta))
        self._epsilons[key] = epsilon
        while len(self._epsilons) > _CACHE_SIZE:
            self._epsilons.popitem(last=False)
        return epsilon

    def epsilon(self, delta: float | None = None, accountant: accountant_lib.AccountantName | None = None) -> float:
        """Epsilon of the recorded rounds (0 if none).

        Args:
          delta: target delta in (0, 1); default: the ledger's.
          accountant: ``"rdp"`` or ``"pld"``; default: the ledger's.

        Returns:
          Epsilon as a float, equal to ``epsilon_for(self.event(), ...)``; ``inf`` if a
          round had no noise.

        Raises:
          ValueError: if ``delta`` is missing or invalid, or ``accountant`` is unknown.

        **Formal guarantees**

        - Bound: the recorded rounds are ``(epsilon, delta)``-DP (an upper bound).
        - Relation: add/remove-one. Unit: :attr:`unit`.
        - Not protected: see :class:`PrivacyLedger`.
        """
        delta, accountant = self._resolve(delta, accountant)
        return self._epsilon(delta, accountant)

    def delta_for(self, epsilon: float, accountant: accountant_lib.AccountantName | None = None) -> float:
        """Delta of the recorded rounds at ``epsilon`` (0 if none).

        Raises:
          ValueError: if ``epsilon`` is not finite and > 0, or ``accountant`` is unknown.

        **Formal guarantees**

        - Bound: the recorded rounds are ``(epsilon, delta)``-DP (delta an upper bound).
        - Relation: add/remove-one. Unit: :attr:`unit`.
        - Not protected: see :class:`PrivacyLedger`.
        """
        epsilon = _validation.check_epsilon(epsilon)
        accountant = _validation.check_choice(self._accountant if accountant is None else accountant, "accountant",
                                              accountant_lib.ACCOUNTANTS)
        if not self._rounds:
            return 0.0
        return float(self._composed(accountant, self._sampled_runs, self._gaussian_counts).get_delta(epsilon))

    def epsilon_after(self, *, next_round_noise_multiplier: float, sampling_rate: float, steps: int = 1,
                      delta: float | None = None, accountant: accountant_lib.AccountantName | None = None) -> float:
        """Epsilon the ledger would show if the next round ran with these parameters.

        Nothing is recorded. Arguments as for :meth:`record_round` and :meth:`epsilon`.

        **Formal guarantees**

        - Bound: the recorded rounds plus the proposed one are ``(epsilon, delta)``-DP.
        - Relation: add/remove-one. Unit: :attr:`unit`.
        - Not protected: see :class:`PrivacyLedger`.
        """
        entry = LedgerRound(noise_multiplier=next_round_noise_multiplier, sampling_rate=sampling_rate, steps=steps)
        delta, accountant = self._resolve(delta, accountant)
        return self._epsilon(delta, accountant, entry)

    def _budget(self, budget_epsilon) -> float:
        budget_epsilon = self._budget_epsilon if budget_epsilon is None else budget_epsilon
        if budget_epsilon is None:
            raise ValueError("budget_epsilon must be given (a finite number > 0): the ledger has no default budget")
        return _validation.check_epsilon(budget_epsilon, "budget_epsilon")

    def would_exceed(self, *, next_round_noise_multiplier: float, sampling_rate: float, steps: int = 1,
                     budget_epsilon: float | None = None, delta: float | None = None,
                     accountant: accountant_lib.AccountantName | None = None) -> bool:
        """Whether running the next round would take epsilon above the budget. Checks BEFORE spending.

        Args:
          next_round_noise_multiplier: the noise multiplier the next round would use.
          sampling_rate: its Poisson sampling rate, in (0, 1].
          steps: its releases, ``>= 1``.
          budget_epsilon: the budget; default: the ledger's.
          delta: default: the ledger's.
          accountant: default: the ledger's.

        Returns:
          ``True`` iff ``epsilon_after(...) > budget_epsilon``.

        Raises:
          ValueError: if an argument is missing or outside its allowed range.

        **Formal guarantees**

        - Bound: if every round is run only when this returns ``False``, the recorded
          rounds stay ``(budget_epsilon, delta)``-DP under ``accountant``.
        - Relation: add/remove-one. Unit: :attr:`unit`.
        - Not protected: rounds run despite ``True``; see :class:`PrivacyLedger`.
        """
        budget_epsilon = self._budget(budget_epsilon)
        return self.epsilon_after(next_round_noise_multiplier=next_round_noise_multiplier,
                                  sampling_rate=sampling_rate, steps=steps, delta=delta,
                                  accountant=accountant) > budget_epsilon

    def stop_if_would_exceed(self, *, next_round_noise_multiplier: float, sampling_rate: float, steps: int = 1,
                             budget_epsilon: float | None = None, delta: float | None = None,
                             accountant: accountant_lib.AccountantName | None = None) -> BudgetExhausted | None:
        """:meth:`would_exceed`, and if so stops the ledger and returns the stop record.

        Arguments as for :meth:`would_exceed`. Returns ``None`` when the round fits (and
        records nothing: call :meth:`record_round` after running it). Once stopped, the
        ledger refuses new rounds and keeps returning its stop record.

        **Formal guarantees**

        - Bound, relation, unit: as for :meth:`would_exceed`.
        - Not protected: see :class:`PrivacyLedger`.
        """
        if self._stop is not None:
            return self._stop
        budget_epsilon = self._budget(budget_epsilon)
        delta, accountant = self._resolve(delta, accountant)
        epsilon_next = self.epsilon_after(next_round_noise_multiplier=next_round_noise_multiplier,
                                          sampling_rate=sampling_rate, steps=steps, delta=delta,
                                          accountant=accountant)
        if epsilon_next <= budget_epsilon:
            return None
        spent = self._epsilon(delta, accountant)
        index = len(self._rounds)
        self._stop = BudgetExhausted(
            round_index=index,
            reason=(f"budget exhausted: round {index} (noise_multiplier {float(next_round_noise_multiplier):g}, "
                    f"sampling_rate {float(sampling_rate):g}, steps {steps}) would take epsilon from {spent:.6g} "
                    f"to {epsilon_next:.6g} > budget {budget_epsilon:g} (delta {delta:g}, {accountant})"),
            epsilon_spent=spent,
            epsilon_next=epsilon_next,
            budget_epsilon=budget_epsilon,
            delta=delta,
            accountant=accountant,
        )
        logger.info("%s", self._stop.reason)
        return self._stop

    # -- report -----------------------------------------------------------------------

    def as_dict(self, delta: float | None = None) -> dict[str, float | int | str | bool | None]:
        """Flat, JSON-able ``{"privacy.<key>": value}`` for ``metrics.json``.

        Keys: ``unit``, ``relation``, ``accountant`` (the one that gave ``epsilon``),
        ``budget_accountant``, ``budget_epsilon`` (``None`` without a budget),
        ``rounds_recorded``, ``steps`` (releases recorded), ``noise_multiplier_min`` /
        ``_max``, ``sampling_rate_min`` / ``_max`` (``None`` before the first round),
        ``stopped``, ``stop_round`` (``None`` unless stopped), ``stop_reason``
        (``"not_stopped"`` unless stopped), the accounting provenance, and when a delta is
        known (argument or the ledger's): ``delta``, ``epsilon_rdp``, ``epsilon_pld`` and
        ``epsilon`` (their minimum). Computing ``epsilon_pld`` of a long schedule with
        sampling takes one PLD convolution per distinct round.

        **Formal guarantees**

        - Bound: the recorded rounds are ``(privacy.epsilon, privacy.delta)``-DP.
        - Relation: ``privacy.relation``. Unit: ``privacy.unit``.
        - Not protected: see :class:`PrivacyLedger`.
        """
        delta = self._delta if delta is None else _validation.check_delta(delta)
        sigmas = [entry.noise_multiplier for entry in self._rounds]
        rates = [entry.sampling_rate for entry in self._rounds]
        flat: dict[str, float | int | str | bool | None] = {
            "privacy.unit": self._unit,
            "privacy.relation": "add_remove_one",
            "privacy.accountant": self._accountant,
            "privacy.budget_accountant": self._accountant,
            "privacy.budget_epsilon": self._budget_epsilon,
            "privacy.rounds_recorded": len(self._rounds),
            "privacy.steps": self.steps_recorded,
            "privacy.noise_multiplier_min": min(sigmas) if sigmas else None,
            "privacy.noise_multiplier_max": max(sigmas) if sigmas else None,
            "privacy.sampling_rate_min": min(rates) if rates else None,
            "privacy.sampling_rate_max": max(rates) if rates else None,
            "privacy.stopped": self._stop is not None,
            "privacy.stop_round": None if self._stop is None else self._stop.round_index,
            "privacy.stop_reason": "not_stopped" if self._stop is None else self._stop.reason,
            "privacy.rdp_orders": accountant_lib._rdp_summary(),
            "privacy.pld_value_discretization_interval": accountant_lib.PLD_VALUE_DISCRETIZATION_INTERVAL,
            "privacy.dp_accounting_version": accountant_lib._dp_accounting_version(),
        }
        if delta is not None:
            epsilon_rdp = self._epsilon(delta, "rdp")
            epsilon_pld = self._epsilon(delta, "pld")
            flat.update({
                "privacy.delta": delta,
                "privacy.epsilon_rdp": epsilon_rdp,
                "privacy.epsilon_pld": epsilon_pld,
                "privacy.epsilon": min(epsilon_rdp, epsilon_pld),
                "privacy.accountant": "pld" if epsilon_pld <= epsilon_rdp else "rdp",
            })
        return flat
