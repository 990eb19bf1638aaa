"""Local DP of each hospital's update as the plan of a run: privatise before anything leaves.

Every round each hospital clips its whole update and adds noise itself
(:class:`fedpriv.defenses.LocalDPPlan`: Gaussian, Laplace or PrivUnit), so the server and
everything after it see only privatised messages; compression after it is post-processing.
The whole-run epsilon composes one release per round over every round (a hospital left out
of a round released nothing then, so this over-states, never under).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedpriv.defenses.local_dp import LocalDPPlan
from fedpriv.defenses.plans.dp_plan_base import PublicWeightsMixin, check_ledger_composition
from fedpriv.defenses.plans.protocol import (BatchSampling, Composition, NoCentralRoundsMixin, RunShape,
                                             UpdateStage)
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib

UNIT = "client"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalDPConfig:
    """Local DP as the user states it (``defense.local_dp``) and the delta of the whole run.

    Attributes:
      mechanism: the per-round mechanism of each hospital's message.
      delta: the delta the whole-run epsilon is stated at, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for the Gaussian's composition.
    """

    mechanism: LocalDPPlan
    delta: float
    accountant: str = "pld"

    def __post_init__(self):
        _validation.check_delta(self.delta)
        _validation.check_choice(self.accountant, "accountant", accountant_lib.ACCOUNTANTS)

    def make(self, shape: RunShape) -> "LocalDPPrivacyPlan":
        if shape.batch_size > min(shape.hospital_sizes):
            raise ValueError(f"batch_size {shape.batch_size} is larger than the smallest hospital "
                             f"({min(shape.hospital_sizes)} records); lower algorithm.batch_size")
        return LocalDPPrivacyPlan(config=self, shape=shape,
                                  batch_sampling=BatchSampling(kind="shuffle", capacity=shape.batch_size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivatizeUpdate:
    """The client-side stage: clip and noise the whole update with the hospital's own key."""

    mechanism: LocalDPPlan

    def transform(self, key):
        return self.mechanism.transform(key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalDPPrivacyPlan(PublicWeightsMixin, NoCentralRoundsMixin):
    """Local DP in every hospital, every round.

    **Formal guarantees**

    - Bound: all of one hospital's messages over the run are ``(privacy.epsilon,
      privacy.delta)``-DP (``privacy.epsilon_per_round`` each), for any two local datasets of
      the hospital; everything the server and the attacker compute is post-processing.
    - Relation: replace-one of the client's whole data (local DP). Unit: one hospital.
    - Not protected: that the hospital took part; the update's dimension; the run seed,
      unless ``privacy.secure_randomness`` is set; floating-point samplers.
    """

    name = "local_dp"
    units = (UNIT,)
    local_mechanism = None
    config: LocalDPConfig
    shape: RunShape
    batch_sampling: BatchSampling

    def client_update_stages(self, compression: UpdateStage | None) -> tuple[UpdateStage, ...]:
        privatize = PrivatizeUpdate(mechanism=self.config.mechanism)
        return (privatize,) if compression is None else (privatize, compression)

    def server_noise(self):
        return None

    def check_composition(self, composition: Composition) -> None:
        self.check_public_weighting(composition)
        check_ledger_composition(self.name, composition, ledger_keys=())

    def dp_event(self):
        return self.config.mechanism.dp_event(self.shape.rounds)

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]:
        mechanism = self.config.mechanism
        epsilon = mechanism.epsilon_after(self.shape.rounds, delta=self.config.delta,
                                          accountant=self.config.accountant)
        return {"privacy.unit": UNIT, "privacy.relation": "replace_one_local", "privacy.delta": self.config.delta,
                "privacy.epsilon": float(epsilon), "privacy.accountant": self.config.accountant,
                "privacy.steps": self.shape.rounds, "privacy.local_dp.mechanism": mechanism.mechanism,
                "privacy.epsilon_per_round": float(mechanism.epsilon)}

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float:
        mechanism = self.config.mechanism
        return float(mechanism.noise_stddev) if mechanism.mechanism == "gaussian" else 0.0

    def audit_mechanisms(self) -> Mapping[str, Any]:
        return {}
