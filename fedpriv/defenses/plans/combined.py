"""Several DP plans in one run (e.g. DP-SGD inside each hospital and DP-FedAvg across them).

Each part keeps its own guarantee for its own unit; the combined plan answers the
questions by asking every part. Parts are listed in the order their client-side stages
run: local DP first (it must see the raw update), example-level DP-SGD (inside local
training), client-level DP-FedAvg last (its clip is the last thing a hospital does).
The first part's report is the run's ``privacy.*``; the others follow under
``privacy.<part name>.*``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import optax

from fedpriv.defenses.plans.dp_plan_base import PublicWeightsMixin
from fedpriv.defenses.plans.protocol import Composition, RoundNoise, RunShape, UpdateStage
from fedpriv.privacy.ledger import LedgerRound


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChainedStages:
    """Client-side stages run one after another, each with its own key."""

    stages: tuple[UpdateStage, ...]

    def transform(self, key):
        keys = jax.random.split(key, len(self.stages))
        return optax.chain(*(stage.transform(k) for stage, k in zip(self.stages, keys)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CombinedPrivacyConfig:
    """Parts (privacy configs), in client-stage order: local DP, DP-SGD, DP-FedAvg."""

    parts: tuple

    def __post_init__(self):
        if len(self.parts) < 2:
            raise ValueError(f"a combined privacy config needs at least two parts, got {len(self.parts)}")

    def make(self, shape: RunShape) -> "CombinedPrivacyPlan":
        plans = tuple(part.make(shape) for part in self.parts)
        names = [plan.name for plan in plans]
        if len(set(names)) != len(names):
            raise ValueError(f"privacy plans {names} repeat a kind; combine different kinds only")
        if sum(plan.server_noise() is not None for plan in plans) > 1:
            raise ValueError(f"privacy plans {names}: at most one of them may add noise on the server")
        return CombinedPrivacyPlan(parts=plans)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CombinedPrivacyPlan(PublicWeightsMixin):
    """Every part's guarantee holds for its own unit (each part's **Formal guarantees**)."""

    parts: tuple

    @property
    def name(self) -> str:
        return "+".join(part.name for part in self.parts)

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(unit for part in self.parts for unit in part.units))

    @property
    def batch_sampling(self):
        # Poisson batches if any part samples records (DP-SGD); shuffled epochs otherwise.
        return max((part.batch_sampling for part in self.parts), key=lambda sampling: sampling.kind == "poisson")

    @property
    def local_mechanism(self):
        return next((part.local_mechanism for part in self.parts if part.local_mechanism is not None), None)

    def client_update_stages(self, compression: UpdateStage | None) -> tuple[UpdateStage, ...]:
        stages: tuple[UpdateStage, ...] = () if compression is None else (compression,)
        for part in self.parts:
            upstream = ChainedStages(stages=stages) if len(stages) > 1 else (stages[0] if stages else None)
            stages = part.client_update_stages(upstream)
        return stages

    def server_noise(self):
        return next((part.server_noise() for part in self.parts if part.server_noise() is not None), None)

    def check_composition(self, composition: Composition) -> None:
        for part in self.parts:
            part.check_composition(composition)

    def round_noise(self, round_index: int) -> RoundNoise:
        noises = [part.round_noise(round_index) for part in self.parts]
        return RoundNoise(local=next((n.local for n in noises if n.local is not None), None),
                          server=next((n.server for n in noises if n.server is not None), None))

    def ledger_rounds(self, round_index: int) -> Mapping[str, LedgerRound]:
        return {key: value for part in self.parts for key, value in part.ledger_rounds(round_index).items()}

    def ledger_budgets(self) -> Mapping[str, float]:
        return {key: value for part in self.parts for key, value in part.ledger_budgets().items()}

    def dp_event(self):
        return self.parts[0].dp_event()

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]:
        flat = dict(self.parts[0].report(spent))
        for part in self.parts[1:]:
            for key, value in part.report().items():
                flat[key.replace("privacy.", f"privacy.{part.name}.", 1)] = value
        return flat

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float:
        return math.sqrt(sum(part.update_noise_stddev(round_index, learning_rate=learning_rate,
                                                      local_steps=local_steps) ** 2 for part in self.parts))

    def audit_mechanisms(self) -> Mapping[str, Any]:
        return {key: value for part in self.parts for key, value in part.audit_mechanisms().items()}
