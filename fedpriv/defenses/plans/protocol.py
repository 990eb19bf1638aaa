"""The one protocol every privacy configuration of a run implements (DESIGN §2, §4).

A *privacy config* is what the user states (frozen, validated; built from YAML by
``experiments/build.py``); ``config.make(shape)`` turns it, with the public facts of the run
(:class:`RunShape`), into a *privacy plan*: the object that answers every question the
round, the scenario and the reports ask about privacy, so no code asks which plan it holds.
"No privacy" is a plan of its own (:class:`fedpriv.defenses.plans.NoPrivacy`).

The questions (the members of :class:`PrivacyPlan`):

- how each hospital draws its batches (:attr:`PrivacyPlan.batch_sampling`);
- what runs inside every local step (:attr:`PrivacyPlan.local_mechanism`: a DP-SGD
  mechanism, or ``None``) and on each client's update before it leaves the hospital
  (:meth:`PrivacyPlan.client_update_stages`, with compression put where it keeps the
  guarantee);
- what the server adds to the sum (:meth:`PrivacyPlan.server_noise`);
- the aggregation weights it permits (:meth:`PrivacyPlan.aggregation_weights`: public
  constants under DP, never a realised sample count);
- which server stages, protocols and run options it composes with
  (:meth:`PrivacyPlan.check_composition`, before any compute);
- each round's noise multipliers (:meth:`PrivacyPlan.round_noise`) and what a privacy
  ledger or the signed audit log records for the round (:meth:`PrivacyPlan.ledger_rounds`);
- its ``dp_accounting`` event and its report (:meth:`PrivacyPlan.dp_event`,
  :meth:`PrivacyPlan.report`).

The shape follows jax_privacy's ``ExecutionPlanConfig.make()`` (each privacy configuration a
frozen object returning every coupled part) without its code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import dp_accounting
import jax
import numpy as np
import optax

from fedpriv.privacy import _validation
from fedpriv.privacy.ledger import LedgerRound
from fedpriv.typing import Array, PRNGKey

PROTOCOL_NAMES = ("plaintext", "secure_aggregation", "homomorphic")
CLIENT_SELECTIONS = ("all", "fixed_size", "poisson")
WEIGHTINGS = ("uniform", "examples")
SERVER_STAGE_NAMES = ("screening", "robust_aggregation")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunShape:
    """The public facts of a run a plan is made for.

    Attributes:
      rounds: training rounds, ``>= 1``.
      local_steps: local steps per round, ``>= 1``.
      batch_size: the protocol's batch size per local step, ``>= 1``.
      hospital_sizes: records of each hospital (public here, as in DP-SGD practice: the
        expected batch size is a public constant derived from them).
      client_selection: ``"all"``, ``"fixed_size"`` (``clients_per_round`` uniformly
        without replacement) or ``"poisson"`` (each client with ``client_sampling_rate``).
      client_sampling_rate: the Poisson rate of a client per round (1.0 for ``"all"``).
      tier_names: the sensitivity tiers the cohort's records carry (``("general",)``
        when the cohort has none).
    """

    rounds: int
    local_steps: int
    batch_size: int
    hospital_sizes: tuple[int, ...]
    client_selection: str = "all"
    client_sampling_rate: float = 1.0
    tier_names: tuple[str, ...] = ("general",)

    def __post_init__(self):
        for name in ("rounds", "local_steps", "batch_size"):
            _validation.check_steps(getattr(self, name), name)
        sizes = tuple(int(size) for size in self.hospital_sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"hospital_sizes must list at least one hospital, each with >= 1 record, got {sizes}")
        object.__setattr__(self, "hospital_sizes", sizes)
        _validation.check_choice(self.client_selection, "client_selection", CLIENT_SELECTIONS)
        _validation.check_sampling_rate(self.client_sampling_rate, "client_sampling_rate")

    @property
    def num_clients(self) -> int:
        return len(self.hospital_sizes)

    @property
    def mean_hospital_size(self) -> float:
        return float(np.mean(self.hospital_sizes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchSampling:
    """How each hospital draws a local step's batch (what the data layer builds).

    Attributes:
      kind: ``"shuffle"`` (epochs of reshuffled records, ``capacity`` = the batch size) or
        ``"poisson"`` (each record independently, what DP-SGD's accounting assumes).
      capacity: padded batch slots per step (a Poisson draw above it grows the round).
      tier_rates: under ``"poisson"``, the rate of each tier (one value when untiered).
    """

    kind: str
    capacity: int
    tier_rates: tuple[float, ...] = ()

    def record_rates(self, record_tiers: np.ndarray) -> np.ndarray | None:
        """``[N]`` each record's Poisson rate from its tier id, or ``None`` when shuffling."""
        if self.kind != "poisson":
            return None
        record_tiers = np.asarray(record_tiers)
        if len(self.tier_rates) == 1:  # an untiered plan samples every record alike, whatever its tier
            return np.full(record_tiers.shape, self.tier_rates[0], np.float64)
        return np.asarray(self.tier_rates, np.float64)[record_tiers]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundNoise:
    """One round's noise multipliers (traced into the compiled round: schedules never recompile).

    Attributes:
      local: DP-SGD's multiplier inside every local step, or ``None``.
      server: the multiplier of the noise the server adds to the clipped sum, or ``None``.
    """

    local: Any = None
    server: Any = None

    def traced(self) -> "RoundNoise":
        """The same multipliers as float32 scalars (what the compiled round takes)."""
        as_array = lambda value: None if value is None else jax.numpy.float32(value)
        return RoundNoise(local=as_array(self.local), server=as_array(self.server))



@dataclasses.dataclass(frozen=True, kw_only=True)
class Composition:
    """What a run composes around its privacy plan, checked by the plan before any compute.

    Attributes:
      server_stages: the per-client server stages in order (``SERVER_STAGE_NAMES``).
      protocol: how the server reads the updates (``PROTOCOL_NAMES``).
      weighting: the aggregation weighting asked for (``WEIGHTINGS``).
      client_selection: how clients are picked each round (``CLIENT_SELECTIONS``).
      stop_on_budget: a privacy ledger stops the run before it overspends.
      audit_log: hospitals sign a record of each round's release.
    """

    server_stages: tuple[str, ...] = ()
    protocol: str = "plaintext"
    weighting: str = "uniform"
    client_selection: str = "all"
    stop_on_budget: bool = False
    audit_log: bool = False

    def __post_init__(self):
        for stage in self.server_stages:
            _validation.check_choice(stage, "server stage", SERVER_STAGE_NAMES)
        _validation.check_choice(self.protocol, "protocol", PROTOCOL_NAMES)
        _validation.check_choice(self.weighting, "weighting", WEIGHTINGS)
        _validation.check_choice(self.client_selection, "client_selection", CLIENT_SELECTIONS)


class Refused(ValueError):
    """A combination a plan does not compose with; the message names both sides and why."""


def refuse(plan_name: str, what: str, why: str) -> Refused:
    return Refused(f"privacy plan {plan_name!r} does not compose with {what}: {why}")


class NoCentralRoundsMixin:
    """The answers of a plan that adds no central Gaussian noise and records no ledger
    rounds (no DP, local DP): nothing for the clients or server to add, nothing to account."""

    def round_noise(self, round_index: int) -> RoundNoise:
        return RoundNoise()

    def ledger_rounds(self, round_index: int) -> Mapping[str, LedgerRound]:
        return {}

    def ledger_budgets(self) -> Mapping[str, float]:
        return {}


@runtime_checkable
class UpdateStage(Protocol):
    """A transform each hospital applies to its update before sending it (keyed per client)."""

    def transform(self, key: PRNGKey) -> optax.GradientTransformation: ...


@runtime_checkable
class PrivacyPlan(Protocol):
    """What every privacy plan answers (see the module docstring).

    **Formal guarantees** are stated by each implementation; :meth:`report` gives the
    bound, the relation and the unit in ``metrics.json`` form.
    """

    name: str
    units: tuple[str, ...]
    batch_sampling: BatchSampling
    local_mechanism: Any

    def client_update_stages(self, compression: UpdateStage | None) -> tuple[UpdateStage, ...]: ...

    def server_noise(self) -> Any: ...

    def aggregation_weights(self, weighting: str, client_mask: Array, realised_examples: Array) -> Array: ...

    def check_composition(self, composition: Composition) -> None: ...

    def round_noise(self, round_index: int) -> RoundNoise: ...

    def ledger_rounds(self, round_index: int) -> Mapping[str, LedgerRound]: ...

    def ledger_budgets(self) -> Mapping[str, float]: ...

    def dp_event(self) -> dp_accounting.DpEvent | None: ...

    def report(self, spent: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    def update_noise_stddev(self, round_index: int, *, learning_rate: float, local_steps: int) -> float: ...

    def audit_mechanisms(self) -> Mapping[str, Any]: ...


@runtime_checkable
class PrivacyConfig(Protocol):
    """What the user states; ``make`` builds the plan of one run (validating before compute)."""

    def make(self, shape: RunShape) -> PrivacyPlan: ...
