"""Client-level DP-FedAvg as the plan of a run: a clip in every hospital, noise on the server's sum.

The plan couples the three parts of McMahan et al.'s mechanism (see
:class:`fedpriv.defenses.DPFedAvgPlan`): Poisson sampling of clients, the clip of each
client's whole update (the last thing a hospital does before sending, after any
compression, so the sum's sensitivity is the clip norm whatever compression did) and
Gaussian noise on the SUM, divided by the public expected cohort size. Nothing between
the clip and the noise may look at individual updates: screening and robust rules
decide from every present client at once, so adding one client could flip which others
count and the noised sum's sensitivity would no longer be the clip norm. They are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedpriv.defenses.dp_fedavg import DPFedAvgPlan
from fedpriv.defenses.local_dp import clip_update_l2
from fedpriv.defenses.noise import GaussianNoiseState
from fedpriv.defenses.plans.dp_plan_base import PublicWeightsMixin, check_gaussian_settings
from fedpriv.defenses.plans.protocol import (BatchSampling, Composition, RoundNoise, RunShape, UpdateStage,
                                             refuse)
from fedpriv.defenses.server_stages import RoundAggregate, StageContext
from fedpriv.privacy.ledger import LedgerRound
from fedpriv.typing import PRNGKey

UNIT = "client"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipUpdate:
    """Each hospital clips its whole update to global L2 norm ``l2_clip_norm`` before sending;
    an update with a non-finite coordinate is sent as all zeros (counted by the server as a
    zero contribution, which stays inside the clip)."""

    l2_clip_norm: float

    def transform(self, key: PRNGKey) -> optax.GradientTransformation:
        del key  # deterministic

        def update_fn(updates, state, params=None):
            leaves = jax.tree_util.tree_leaves(updates)
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
            safe = jax.tree_util.tree_map(lambda leaf: jnp.where(finite, leaf, jnp.zeros_like(leaf)), updates)
            return clip_update_l2(safe, self.l2_clip_norm), state

        return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianSumNoise:
    """The server's aggregator under DP-FedAvg: ``(clipped sum + N(0, (sigma C)^2 I)) / E[clients]``.

    The state is the noise key, split every round (optax's ``AddNoiseState`` manner). An
    aborted round (a secure protocol that could not finish) releases nothing and draws no noise.

    **Formal guarantees**

    - Bound: one Poisson-sampled Gaussian release per round with the round's multiplier
      (sensitivity ``l2_clip_norm``); the plan's event composes them.
    - Relation: add/remove-one client. Unit: one client.
    """

    mechanism: DPFedAvgPlan
    name = "server_noise"
    runs_on_host = False
    reads_messages = False

    def init(self, key: PRNGKey) -> GaussianNoiseState:
        return GaussianNoiseState(key=key)

    def update(self, aggregate: RoundAggregate, state: GaussianNoiseState, context: StageContext):
        next_key, draw_key = jax.random.split(state.key)
        mean = self.mechanism.noised_mean(aggregate.weighted_sum, draw_key, context.server_noise_multiplier)
        return aggregate.replace(mean_update=mean), GaussianNoiseState(key=next_key), {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPFedAvgConfig:
    """Client-level DP as the user states it (``defense.dp_fedavg``).

    Attributes:
      l2_clip_norm: clip norm of one client's update, > 0.
      noise_multiplier: fixed, or ``None`` to calibrate to ``target_epsilon`` at ``delta``.
      target_epsilon: the client-level budget, > 0.
      delta: delta, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for calibration.
    """

    l2_clip_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self):
        check_gaussian_settings(self)

    def make(self, shape: RunShape) -> "DPFedAvgPrivacyPlan":
        common = dict(l2_clip_norm=self.l2_clip_norm, client_sampling_rate=shape.client_sampling_rate,
                      rounds=shape.rounds, expected_clients_per_round=shape.client_sampling_rate * shape.num_clients)
        if self.noise_multiplier is None:
            mechanism = DPFedAvgPlan.calibrated(target_epsilon=self.target_epsilon, delta=self.delta,
                                                accountant=self.accountant, **common)
        else:
            mechanism = DPFedAvgPlan(noise_multiplier=self.noise_multiplier, **common)
        if shape.batch_size > min(shape.hospital_sizes):
            raise ValueError(f"batch_size {shape.batch_size} is larger than the smallest hospital "
                             f"({min(shape.hospital_sizes)} records); lower algorithm.batch_size")
        return DPFedAvgPrivacyPlan(config=self, shape=shape, mechanism=mechanism,
                                   batch_sampling=BatchSampling(kind="shuffle", capacity=shape.batch_size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPFedAvgPrivacyPlan(PublicWeightsMixin):
    """DP-FedAvg (McMahan et al. 2018, arXiv 1710.06963) as the plan of a run.

    **Formal guarantees**

    - Bound: every global model (and anything computed from them) is
      ``(privacy.epsilon, delta)``-DP per hospital, when clients are Poisson-sampled (or all
      take part) and at most ``rounds`` rounds release a noised sum.
    - Relation: add/remove-one client. Unit: one hospital, all of its records.
    - Not protected: the clipped updates themselves under the plaintext protocol (the
      server adds the noise: use secure aggregation or local DP against it); who took
      part; the run seed, unless ``privacy.secure_randomness`` is set.
    """

    name = "dp_fedavg"
    units = (UNIT,)
    local_mechanism = None
    config: DPFedAvgConfig
    shape: RunShape
    mechanism: DPFedAvgPlan
    batch_sampling: BatchSampling

    def client_update_stages(self, compression: UpdateStage | None) -> tuple[UpdateStage, ...]:
        clip = ClipUpdate(l2_clip_norm=self.mechanism.l2_clip_norm)
        return (clip,) if compression is None else (compression, clip)

    def server_noise(self) -> GaussianSumNoise:
        return GaussianSumNoise(mechanism=self.mechanism)

    def check_composition(self, composition: Composition) -> None:
        self.check_public_weighting(composition)
        if composition.server_stages:
            raise refuse(self.name, f"defense.{composition.server_stages[0]}",
                         "it decides which clients count from every present client at once, so one client "
                         "can change the others' weights and the noised sum's sensitivity is no longer the "
                         "clip norm (client-level epsilon void)")
        if composition.client_selection == "fixed_size":
            raise refuse(self.name, "algorithm.clients_per_round", "the accounting assumes Poisson client sampling "
                         "(algorithm.client_sampling_rate) or every client every round")

    def round_noise(self, round_index: int) -> RoundNoise:
        return RoundNoise(server=self.mechanism.noise_multiplier_in_round(round_index))

    def ledger_rounds(self, round_index: int) -> Mapping[str, LedgerRound]:
        return {UNIT: LedgerRound(noise_multiplier=self.mechanism.noise_multiplier_in_round(round_index),
                                  sampling_rate=self.mechanism.client_sampling_rate, steps=1)}

    def ledger_budgets(self) -> Mapping[str, float]:
        return {UNIT: self.config.target_epsilon}

    def dp_event(self):
        return self.mechanism.dp_event()

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]:
        flat = dict(spent) if spent else self.mechanism.report(self.config.delta).as_dict()
        flat["privacy.unit"] = UNIT
        return flat

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float:
        """0: the server adds the noise after it has read the clipped updates (or their sum)."""
        return 0.0

    def audit_mechanisms(self) -> Mapping[str, Any]:
        mechanism = self.mechanism
        weakest = min(mechanism.noise_multiplier_in_round(r) for r in range(mechanism.rounds))
        return {UNIT: DPFedAvgPlan(l2_clip_norm=mechanism.l2_clip_norm, noise_multiplier=weakest,
                                   client_sampling_rate=1.0, rounds=1,
                                   expected_clients_per_round=mechanism.expected_clients_per_round)}
