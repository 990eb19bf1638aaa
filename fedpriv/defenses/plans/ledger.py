"""A run's privacy ledger, fed by its plan: it accounts each round before it runs (stop on budget).

One :class:`fedpriv.privacy.PrivacyLedger` per key of the plan's ``ledger_rounds`` (a unit,
or a sensitivity tier), each with the plan's budget for it. The round's entries are what the
plan accounts, whether or not a given hospital took part (under Poisson client sampling
the amplified rate covers the rounds a hospital sat out), so the ledger replays to exactly
the plan's epsilon.
"""

from __future__ import annotations

import logging

from fedpriv.privacy.ledger import PrivacyLedger

logger = logging.getLogger(__name__)


class PlanLedger:
    """Stops a run before the round that would take any key above its budget.

    Args:
      plan: a :class:`fedpriv.defenses.plans.PrivacyPlan` with ledger rounds and budgets.
      delta: the delta the budgets hold at, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``.

    Raises:
      ValueError: if the plan records no rounds (nothing to stop).

    **Formal guarantees**

    - Bound: every key's recorded rounds stay ``(budget, delta)``-DP under ``accountant``
      when each round runs only if :meth:`stop_reason` returned ``""`` for it.
    - Relation: add/remove-one. Unit: each key's (example, client or a tier's records).
    """

    def __init__(self, plan, *, delta: float, accountant: str):
        budgets = plan.ledger_budgets()
        if not budgets:
            raise ValueError(f"privacy plan {plan.name!r} records no rounds: there is no budget to stop at")
        self._plan = plan
        self._ledgers = {key: PrivacyLedger(unit=self._unit(plan, key), budget_epsilon=budget, delta=delta,
                                            accountant=accountant) for key, budget in budgets.items()}
        self._delta = delta

    @staticmethod
    def _unit(plan, key: str) -> str:
        return key if key in ("example", "client") else "example"  # a tier's records are examples

    def stop_reason(self, round_index: int) -> str:
        """``""`` (and the round recorded) when it fits every budget, else why the run stops."""
        entries = self._plan.ledger_rounds(round_index)
        for key, entry in entries.items():
            stop = self._ledgers[key].stop_if_would_exceed(next_round_noise_multiplier=entry.noise_multiplier,
                                                           sampling_rate=entry.sampling_rate, steps=entry.steps)
            if stop is not None:
                return f"{key}: {stop.reason}"
        for key, entry in entries.items():
            self._ledgers[key].record_round(entry.noise_multiplier, entry.sampling_rate, entry.steps)
        return ""

    def checkpoint_state(self) -> dict:
        """Each key's recorded rounds (``fedpriv.federated.checkpoints.HostParty``)."""
        return {key: ledger.checkpoint_state() for key, ledger in self._ledgers.items()}

    def restore_state(self, state) -> None:
        """Replays a :meth:`checkpoint_state` into this fresh ledger (bit-identical epsilons).

        Raises:
          ValueError: if the checkpoint's keys are not this plan's.
        """
        if set(state) != set(self._ledgers):
            raise ValueError(f"the checkpointed privacy ledger has keys {sorted(state)}, this plan's are "
                             f"{sorted(self._ledgers)}")
        for key, ledger in self._ledgers.items():
            ledger.restore_state(state[key])

    def spent(self) -> dict:
        """The first key's ledger report (``privacy.*``) of the rounds that ran."""
        first = next(iter(self._ledgers.values()))
        return first.as_dict(self._delta)
