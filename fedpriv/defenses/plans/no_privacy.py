"""The plan of a run without differential privacy: it answers every question, with "nothing"."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from fedpriv.defenses.plans.protocol import (BatchSampling, Composition, NoCentralRoundsMixin, RunShape,
                                             UpdateStage, refuse)
from fedpriv.typing import Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoPrivacyConfig:
    """No differential privacy (``defense`` without DP-SGD, DP-FedAvg or local DP)."""

    def make(self, shape: RunShape) -> "NoPrivacy":
        if shape.batch_size > min(shape.hospital_sizes):
            raise ValueError(f"batch_size {shape.batch_size} is larger than the smallest hospital "
                             f"({min(shape.hospital_sizes)} records); lower algorithm.batch_size or change the "
                             "partition")
        return NoPrivacy(batch_sampling=BatchSampling(kind="shuffle", capacity=shape.batch_size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoPrivacy(NoCentralRoundsMixin):
    """No formal guarantee: batches are shuffled epochs, nothing is clipped or noised.

    **Formal guarantees**

    - Bound: none (``privacy.epsilon = inf``, ``privacy.unit = "none"``).
    - Not protected: everything; other defenses (secure protocols, compression,
      partitioning, screening) change what an attacker sees, not a DP bound.
    """

    name = "none"
    units: tuple[str, ...] = ()
    batch_sampling: BatchSampling
    local_mechanism = None

    def client_update_stages(self, compression: UpdateStage | None) -> tuple[UpdateStage, ...]:
        return () if compression is None else (compression,)

    def server_noise(self):
        return None

    def aggregation_weights(self, weighting: str, client_mask: Array, realised_examples: Array) -> Array:
        """FedAvg's realised example counts (``"examples"``) or uniform over participants."""
        if weighting == "examples":
            return jnp.asarray(realised_examples, jnp.float32) * client_mask
        return jnp.asarray(client_mask, jnp.float32)

    def check_composition(self, composition: Composition) -> None:
        if composition.stop_on_budget:
            raise refuse(self.name, "privacy.stop_on_budget", "a run without DP has no budget to stop at")
        if composition.audit_log:
            raise refuse(self.name, "defense.audit_log", "the audit log attests each round's DP release; a run "
                         "without DP-SGD or DP-FedAvg releases none")

    def dp_event(self):
        return None

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"privacy.unit": "none", "privacy.epsilon": float("inf")}

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float:
        return 0.0

    def audit_mechanisms(self) -> Mapping[str, Any]:
        return {}
