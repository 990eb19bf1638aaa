"""Example-level DP-SGD inside every hospital, as the plan of a run: constant, scheduled or tiered.

Every local step of every hospital Poisson-samples its records (rate ``batch_size / mean
hospital size``), clips each example's gradient, noises the clipped SUM and divides by the
public expected batch size (:class:`fedpriv.defenses.DPSGDPlan`; with sensitivity tiers
:class:`fedpriv.defenses.TieredDPSGDPlan`). The accounting assumes every hospital takes
part in every round, which ignores amplification by client sampling and so over-states
epsilon, never under.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedpriv.data.client_data import poisson_capacity
from fedpriv.defenses.dp_sgd import DPSGDPlan
from fedpriv.defenses.noise import update_noise_stddev
from fedpriv.defenses.plans.dp_plan_base import PublicWeightsMixin, check_gaussian_settings
from fedpriv.defenses.plans.protocol import (BatchSampling, Composition, RoundNoise, RunShape, UpdateStage,
                                             refuse)
from fedpriv.defenses.tiered_dp_sgd import TIER_METHODS, TieredDPSGDPlan
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import schedules
from fedpriv.privacy.ledger import LedgerRound

UNIT = "example"


def _sampling_rate(shape: RunShape) -> float:
    rate = shape.batch_size / shape.mean_hospital_size
    if rate > 1:
        raise ValueError(f"batch_size {shape.batch_size} exceeds the mean hospital size "
                         f"{shape.mean_hospital_size:.1f}: the Poisson sampling rate would be above 1")
    return rate


def check_schedule(schedule: Mapping[str, Any]) -> dict:
    """A ``{"kind": ..., **options}`` noise schedule, validated (built once) before any compute."""
    schedule = dict(schedule)
    kind = schedule.get("kind")
    if kind not in schedules.SCHEDULE_KINDS:
        raise ValueError(f"privacy.schedule.kind must be one of {schedules.SCHEDULE_KINDS}, got {kind!r}")
    if kind not in ("constant", "budget_aware"):
        schedules.make_schedule(kind, **{k: v for k, v in schedule.items() if k != "kind"})
    return schedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPSGDConfig:
    """DP-SGD as the user states it (``defense.dp_sgd: true`` with the ``privacy`` group).

    Attributes:
      l2_clip_norm: per-example clip norm, > 0.
      noise_multiplier: fixed noise multiplier, or ``None`` to calibrate it to
        ``target_epsilon`` at ``delta`` with ``accountant``.
      target_epsilon: the budget of the whole run (calibration, stop-on-budget), > 0.
      delta: delta, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for calibration (reports give both).
      schedule: ``{"kind": ..., **options}`` (``fedpriv.privacy.make_schedule``):
        ``"constant"`` uses ``noise_multiplier`` (or calibrates it); ``"budget_aware"``
        scales its ``profile`` so the planned run spends ``target_epsilon``; the other
        kinds give their own multipliers and the accountant composes what they spend.
    """

    l2_clip_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float
    delta: float
    accountant: str = "rdp"
    schedule: dict = dataclasses.field(default_factory=lambda: {"kind": "constant"})

    def __post_init__(self):
        check_gaussian_settings(self)
        object.__setattr__(self, "schedule", check_schedule(self.schedule))

    def mechanism(self, *, sampling_rate: float, rounds: int, steps_per_round: int,
                  expected_batch_size: float) -> DPSGDPlan:
        """The DP-SGD mechanism of ``rounds`` rounds of ``steps_per_round`` local steps."""
        common = dict(l2_clip_norm=self.l2_clip_norm, sampling_rate=sampling_rate, steps=rounds * steps_per_round,
                      expected_batch_size=expected_batch_size)
        options = {k: v for k, v in self.schedule.items() if k != "kind"}
        kind = self.schedule["kind"]
        if kind == "constant":
            if self.noise_multiplier is None:
                return DPSGDPlan.calibrated(target_epsilon=self.target_epsilon, delta=self.delta,
                                            accountant=self.accountant, **common)
            return DPSGDPlan(noise_multiplier=self.noise_multiplier, **common)
        if kind == "budget_aware":
            profile = options.pop("profile", None)
            schedule = schedules.BudgetAwareSchedule(
                target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds, sampling_rate=sampling_rate,
                steps_per_round=steps_per_round, accountant=self.accountant,
                **({"profile": schedules.make_schedule(**profile)} if profile else {}), **options)
        else:
            schedule = schedules.make_schedule(kind, **options)
        sequence = schedule.sequence(rounds)
        return DPSGDPlan(noise_multiplier=sequence[0], round_noise_multipliers=sequence, **common)

    def make(self, shape: RunShape) -> "DPSGDPrivacyPlan":
        rate = _sampling_rate(shape)
        mechanism = self.mechanism(sampling_rate=rate, rounds=shape.rounds, steps_per_round=shape.local_steps,
                                   expected_batch_size=float(shape.batch_size))
        capacity = poisson_capacity(max(shape.hospital_sizes), rate)
        return DPSGDPrivacyPlan(config=self, shape=shape, local_mechanism=mechanism,
                                batch_sampling=BatchSampling(kind="poisson", capacity=capacity, tier_rates=(rate,)))


class _ExampleLevelPlan(PublicWeightsMixin):
    """What plain and tiered DP-SGD answer alike (the mechanism runs inside local training)."""

    units = (UNIT,)

    def client_update_stages(self, compression: UpdateStage | None) -> tuple[UpdateStage, ...]:
        # Compressing a DP-SGD update is post-processing: the guarantee survives it.
        return () if compression is None else (compression,)

    def server_noise(self):
        return None

    def check_composition(self, composition: Composition) -> None:
        # Screening and robust rules read only the hospitals' noisy updates (post-processing
        # of example-level DP releases); secure protocols only hide them further.
        self.check_public_weighting(composition)

    def dp_event(self):
        return self.local_mechanism.dp_event()

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float:
        sum_stddev = self.round_noise(round_index).local * self.local_mechanism.l2_clip_norm
        return update_noise_stddev(sum_stddev, self.local_mechanism.expected_batch_size,
                                   learning_rate=learning_rate, local_steps=local_steps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPSGDPrivacyPlan(_ExampleLevelPlan):
    """Plain DP-SGD (constant or scheduled noise) in every hospital.

    **Formal guarantees**

    - Bound: ``(privacy.epsilon, delta)``-DP per record, for the models released (every
      update a hospital sends is post-processing of its DP-SGD steps), when every hospital
      runs its ``rounds * local_steps`` Poisson-sampled steps (see :class:`DPSGDPlan`);
      with ``stop_on_budget`` the rounds that ran, as the ledger reports.
    - Relation: add/remove-one record. Unit: one record of one hospital.
    - Not protected: see :class:`fedpriv.defenses.DPSGDPlan`; the run seed, unless
      ``privacy.secure_randomness`` draws the noise from OS entropy.
    """

    name = "dp_sgd"
    config: DPSGDConfig
    shape: RunShape
    local_mechanism: DPSGDPlan
    batch_sampling: BatchSampling

    def round_noise(self, round_index: int) -> RoundNoise:
        return RoundNoise(local=self.local_mechanism.noise_multiplier_in_round(round_index))

    def ledger_rounds(self, round_index: int) -> Mapping[str, LedgerRound]:
        mechanism = self.local_mechanism
        return {UNIT: LedgerRound(noise_multiplier=mechanism.noise_multiplier_in_round(round_index),
                                  sampling_rate=mechanism.sampling_rate, steps=self.shape.local_steps)}

    def ledger_budgets(self) -> Mapping[str, float]:
        return {UNIT: self.config.target_epsilon}

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The plan's report; ``spent`` (a ledger's ``as_dict``) replaces it when the run stopped on budget."""
        mechanism = self.local_mechanism
        flat = dict(spent) if spent else mechanism.report(self.config.delta).as_dict()
        flat.update({"privacy.unit": UNIT, "privacy.schedule": self.config.schedule["kind"],
                     "privacy.sampling_rate": mechanism.sampling_rate,
                     "privacy.noise_multiplier_first_round": mechanism.noise_multiplier_in_round(0),
                     "privacy.noise_multiplier_last_round": mechanism.noise_multiplier_in_round(self.shape.rounds - 1)})
        return flat

    def audit_mechanisms(self) -> Mapping[str, Any]:
        """One release at the weakest round (q = 1), for the white-box canary audit."""
        mechanism = self.local_mechanism
        weakest = min(mechanism.noise_multiplier_in_round(r) for r in range(self.shape.rounds))
        return {UNIT: DPSGDPlan(l2_clip_norm=mechanism.l2_clip_norm, noise_multiplier=weakest, sampling_rate=1.0,
                                steps=1, expected_batch_size=mechanism.expected_batch_size)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TieredDPSGDConfig:
    """DP-SGD whose records carry sensitivity tiers, each with its own budget.

    Attributes:
      budgets: ``{tier name: epsilon}``; every tier the cohort's records carry needs one.
      method: ``"scale"`` (per-tier clip norms) or ``"sample"`` (per-tier sampling rates).
      l2_clip_norm: the loosest tier's clip norm, > 0.
      delta: delta of every tier, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for calibration.
    """

    budgets: dict
    method: str = "scale"
    l2_clip_norm: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self):
        _validation.check_choice(self.method, "method", TIER_METHODS)
        if not self.budgets:
            raise ValueError("defense.tiers.budgets must name at least one tier with its epsilon")
        for tier, budget in self.budgets.items():
            _validation.check_epsilon(budget, f"defense.tiers.budgets[{tier!r}]")
        _validation.check_positive(self.l2_clip_norm, "l2_clip_norm")
        _validation.check_delta(self.delta)
        _validation.check_choice(self.accountant, "accountant", accountant_lib.ACCOUNTANTS)

    def make(self, shape: RunShape) -> "TieredDPSGDPrivacyPlan":
        missing = [tier for tier in shape.tier_names if tier not in self.budgets]
        if missing:
            raise ValueError(f"tiers {missing} of the cohort have no budget in defense.tiers.budgets "
                             f"(which has {sorted(self.budgets)})")
        rate = _sampling_rate(shape)
        mechanism = TieredDPSGDPlan.calibrated(
            budgets={tier: self.budgets[tier] for tier in shape.tier_names}, delta=self.delta, method=self.method,
            l2_clip_norm=self.l2_clip_norm, sampling_rate=rate, steps=shape.rounds * shape.local_steps,
            expected_batch_size=float(shape.batch_size), accountant=self.accountant)
        capacity = poisson_capacity(max(shape.hospital_sizes), max(mechanism.sampling_rates))
        return TieredDPSGDPrivacyPlan(config=self, shape=shape, local_mechanism=mechanism, batch_sampling=BatchSampling(
            kind="poisson", capacity=capacity, tier_rates=tuple(mechanism.sampling_rates)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TieredDPSGDPrivacyPlan(_ExampleLevelPlan):
    """DP-SGD with a budget per sensitivity tier (Boenisch et al. 2023, arXiv 2303.17046).

    **Formal guarantees**

    - Bound: a record of tier ``t`` enjoys ``(privacy.tier.t.epsilon, delta)``-DP, at most
      its budget (see :class:`fedpriv.defenses.TieredDPSGDPlan`); ``privacy.epsilon`` is the
      most exposed tier's.
    - Relation: add/remove-one record of the tier. Unit: one record of one hospital.
    - Not protected: tier membership (public); as for plain DP-SGD otherwise.
    """

    name = "tiered_dp_sgd"
    config: TieredDPSGDConfig
    shape: RunShape
    local_mechanism: TieredDPSGDPlan
    batch_sampling: BatchSampling

    def check_composition(self, composition: Composition) -> None:
        super().check_composition(composition)
        if composition.stop_on_budget:
            raise refuse(self.name, "privacy.stop_on_budget", "every tier is calibrated to spend its whole budget "
                         "over the planned rounds; stopping would end all tiers at once")

    def round_noise(self, round_index: int) -> RoundNoise:
        return RoundNoise(local=self.local_mechanism.noise_multiplier_in_round(round_index))

    def ledger_rounds(self, round_index: int) -> Mapping[str, LedgerRound]:
        mechanism = self.local_mechanism
        return {tier: LedgerRound(noise_multiplier=sigma, sampling_rate=rate, steps=self.shape.local_steps)
                for tier, sigma, rate in zip(mechanism.tier_names, mechanism.noise_multipliers,
                                             mechanism.sampling_rates)}

    def ledger_budgets(self) -> Mapping[str, float]:
        return dict(zip(self.local_mechanism.tier_names, self.local_mechanism.budgets))

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]:
        mechanism = self.local_mechanism
        flat = mechanism.report(self.config.delta).as_dict()
        for tier, report in mechanism.tier_reports(self.config.delta).items():
            flat[f"privacy.tier.{tier}.epsilon"] = report.epsilon
            flat[f"privacy.tier.{tier}.budget"] = float(self.config.budgets[tier])
        flat["privacy.unit"] = UNIT
        return flat

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float:
        mechanism = self.local_mechanism
        return update_noise_stddev(mechanism.noise_stddev, mechanism.expected_batch_size,
                                   learning_rate=learning_rate, local_steps=local_steps)

    def audit_mechanisms(self) -> Mapping[str, Any]:
        """Each tier's release as a plain DP-SGD step at its own clip and noise (q = 1)."""
        mechanism = self.local_mechanism
        return {tier: DPSGDPlan(l2_clip_norm=clip, noise_multiplier=sigma, sampling_rate=1.0, steps=1,
                                expected_batch_size=mechanism.expected_batch_size)
                for tier, clip, sigma in zip(mechanism.tier_names, mechanism.clip_norms, mechanism.noise_multipliers)}
