"""Per-tier privacy ledgers: records promised their own budgets (e.g. general, mental health, genomic)."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping

from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import events as events_lib
from fedpriv.privacy.ledger import BudgetExhausted, PrivacyLedger, LedgerRound


class TieredLedger(Mapping):
    """One :class:`PrivacyLedger` per privacy tier, each with its own budget.

    A tier is a set of records promised their own budget (see
    :func:`fedpriv.privacy.tier_events`). Each round, every ACTIVE tier records its own
    noise multiplier and sampling rate; a tier whose next round would overspend is
    stopped (its records must leave training), the others go on. Read it as a mapping
    ``tier -> PrivacyLedger``.

    Args:
      budgets: ``{tier: budget epsilon}``, each finite and > 0; keys name the tiers.
      delta: the delta of every tier, in (0, 1).
      unit: ``"example"`` or ``"client"``.
      accountant: ``"rdp"`` or ``"pld"``.

    Raises:
      ValueError: if an argument is outside its allowed range (the message names the tier).

    **Formal guarantees**

    - Bound: each tier's recorded rounds are ``(budgets[tier], delta)``-DP for the records
      of that tier, if rounds run only for tiers not stopped.
    - Relation: add/remove-one record of a tier.
    - Unit: one record (or client) of a tier.
    - Not protected: tier membership (assumed public); a person in several tiers; a
      stopped tier whose records still take part in training.

    Example:
      >>> tiers = TieredLedger(budgets={"strict": 1.0, "standard": 8.0}, delta=1e-5)
      >>> tiers.record_round({"strict": 4.0, "standard": 1.0}, 1.0)
      >>> {tier: round(epsilon, 3) for tier, epsilon in tiers.epsilon_per_tier().items()}
      {'strict': 1.013, 'standard': 4.729}

    References:
      Boenisch, Muehl, Dziedzic, Rinberg, Papernot 2023, "Have it your way: Individualized
      Privacy Assignment for DP-SGD", arXiv 2303.17046.
    """

    def __init__(self, *, budgets: Mapping[str, float], delta: float, unit: str = "example",
                 accountant: accountant_lib.AccountantName = "rdp"):
        tiers = events_lib._tier_names(budgets, "budgets")
        self._ledgers = {tier: PrivacyLedger(
            unit=unit, budget_epsilon=_validation.check_epsilon(budgets[tier], f"budgets[{tier!r}]"),
            delta=delta, accountant=accountant) for tier in tiers}

    def __getitem__(self, tier: str) -> PrivacyLedger:
        return self._ledgers[tier]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ledgers)

    def __len__(self) -> int:
        return len(self._ledgers)

    @property
    def active_tiers(self) -> tuple[str, ...]:
        """The tiers not stopped, in order."""
        return tuple(tier for tier, ledger in self._ledgers.items() if ledger.stopped is None)

    def _per_active(self, noise_multipliers, sampling_rates, steps):
        active = self.active_tiers
        if not active:
            raise RuntimeError("every tier has stopped: no round may run")
        return (events_lib._per_tier(noise_multipliers, "noise_multipliers", active),
                events_lib._per_tier(sampling_rates, "sampling_rates", active),
                events_lib._per_tier(steps, "steps", active))

    def record_round(self, noise_multipliers: Mapping[str, float] | float,
                     sampling_rates: Mapping[str, float] | float, steps: Mapping[str, int] | int = 1) -> None:
        """Records one round for every active tier.

        Args:
          noise_multipliers: ``{tier: noise multiplier}`` for exactly the active tiers,
            or one value for all of them.
          sampling_rates: likewise, in (0, 1].
          steps: likewise, ``>= 1``.

        Raises:
          ValueError: if the keys are not the active tiers or a value is out of range
            (nothing is recorded then).
          RuntimeError: if every tier has stopped.

        **Formal guarantees**

        - Bound: each tier's :meth:`PrivacyLedger.epsilon` includes the round.
        - Relation: add/remove-one record of a tier. Unit: one record (or client).
        - Not protected: a stopped tier's records taking part in the round.
        """
        sigmas, rates, counts = self._per_active(noise_multipliers, sampling_rates, steps)
        entries = {tier: LedgerRound(
            noise_multiplier=_validation.check_noise_multiplier(sigmas[tier], f"noise_multipliers[{tier!r}]"),
            sampling_rate=_validation.check_sampling_rate(rates[tier], f"sampling_rates[{tier!r}]"),
            steps=_validation.check_steps(counts[tier], f"steps[{tier!r}]")) for tier in sigmas}
        for tier, entry in entries.items():
            self._ledgers[tier].record_round(entry.noise_multiplier, entry.sampling_rate, entry.steps)

    def stop_exhausted(self, next_round_noise_multipliers: Mapping[str, float] | float,
                       sampling_rates: Mapping[str, float] | float,
                       steps: Mapping[str, int] | int = 1) -> dict[str, BudgetExhausted]:
        """Stops every active tier whose next round would overspend; returns the new stops.

        Arguments as for :meth:`record_round`, describing the round about to run. The
        tiers still active afterwards may run it.

        **Formal guarantees**

        - Bound: as for :meth:`PrivacyLedger.stop_if_would_exceed`, per tier.
        - Relation: add/remove-one record of a tier. Unit: one record (or client).
        - Not protected: see :class:`TieredLedger`.
        """
        sigmas, rates, counts = self._per_active(next_round_noise_multipliers, sampling_rates, steps)
        stops = {}
        for tier in sigmas:
            stop = self._ledgers[tier].stop_if_would_exceed(next_round_noise_multiplier=sigmas[tier],
                                                            sampling_rate=rates[tier], steps=counts[tier])
            if stop is not None:
                stops[tier] = stop
        return stops

    def epsilon_per_tier(self, delta: float | None = None,
                         accountant: accountant_lib.AccountantName | None = None) -> dict[str, float]:
        """``{tier: epsilon of its recorded rounds}`` (defaults: the ledgers' delta and accountant).

        **Formal guarantees**

        - Bound: tier ``t``'s records are ``(epsilon[t], delta)``-DP.
        - Relation: add/remove-one record of a tier. Unit: one record (or client).
        - Not protected: see :class:`TieredLedger`.
        """
        return {tier: ledger.epsilon(delta, accountant) for tier, ledger in self._ledgers.items()}

    def as_dict(self) -> dict[str, float | int | str | bool | None]:
        """Flat ``privacy.tiers`` plus ``privacy.tier.<name>.<key>`` for each tier's ledger.

        **Formal guarantees**

        - Bound: per tier, as in :meth:`PrivacyLedger.as_dict`.
        - Relation: add/remove-one record of a tier. Unit: ``privacy.tier.<name>.unit``.
        - Not protected: see :class:`TieredLedger`.
        """
        flat: dict[str, float | int | str | bool | None] = {"privacy.tiers": ",".join(self._ledgers)}
        for tier, ledger in self._ledgers.items():
            for key, value in ledger.as_dict().items():
                flat[f"privacy.tier.{tier}.{key.removeprefix('privacy.')}"] = value
        return flat
