"""One protocol for every reconstruction attack (issue #10).

An attack config is frozen and built once before training::

    attack = config.make(model, public)          # -> Attack
    result = attack(observation, key, victims=[0, 1], side_knowledge=SideKnowledge(labels=...))

``config.kind`` names what the attack recovers (``"images"``, ``"codes"``, ``"tokens"``)
and so which scorer of the scenario scores it and which cohorts it fits; adding an attack
is one module with a config that has ``kind`` and ``make`` and one YAML naming it. The
built ``Attack`` carries the model the federation trains: the given one, or the one a
malicious server crafted from public knowledge (the imprint attack). Membership inference
scores a trained model, not an observed round, and is its own scenario stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import jax
import numpy as np

from fedpriv.typing import Model, Observation, Reconstruction

if TYPE_CHECKING:
    from fedpriv.attacks.image_prior import ImagePrior
    from fedpriv.attacks.inverting_gradients import AttackCompilation

ATTACK_KINDS = ("images", "codes", "tokens", "tabular")


@dataclasses.dataclass(frozen=True)
class CodeRecoveryResult:
    """What a ``"codes"`` attack returns: the recovery and the method the protocol allowed."""

    recovery: Any
    method: str


@dataclasses.dataclass(frozen=True)
class TokenRecoveryResult:
    """What a ``"tokens"`` attack returns: ordered notes and each victim's token bag."""

    notes: Reconstruction
    bags: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class PublicKnowledge:
    """What the attacker holds before the round: public images (never the cohort's), a
    generative prior trained on them, a key for what it builds (a crafted model), and how
    its optimisation is compiled (an ``impl`` choice that never changes the numbers)."""

    compilation: AttackCompilation
    images: np.ndarray | None = None
    prior: ImagePrior | None = None
    key: jax.Array | None = None
    # A tabular cohort's published schema, ``(name, type, width)`` per column in encoded order.
    table_layout: tuple | None = None


@dataclasses.dataclass(frozen=True)
class SideKnowledge:
    """What the threat model grants beyond the observation, declared per call.

    Attributes:
      labels: ``[V, S, B]`` the victims' labels (``label_strategy="known"``), else ``None``.
      noise_stddev: the per-coordinate DP noise on each observed update, from the public plan.
    """

    labels: np.ndarray | None = None
    noise_stddev: float = 0.0


@dataclasses.dataclass(frozen=True)
class Attack:
    """A built attack: call it on an observation.

    Attributes:
      kind: one of ``ATTACK_KINDS``.
      model: the model the server sends (crafted by a malicious server, else the given one).
      iterations: optimisation steps per victim over all restarts (1 for analytic attacks).
      recover: ``(observation, key, victims, side_knowledge) -> result``.
      observes_aggregate: reads records off the aggregate alone (runs under secure aggregation).
      needs_known_labels: the threat model grants the victims' labels (``SideKnowledge.labels``).
    """

    kind: str
    model: Model
    iterations: int
    recover: Callable[[Observation, jax.Array, tuple[int, ...], SideKnowledge], Any]
    observes_aggregate: bool = False
    needs_known_labels: bool = False

    def __call__(self, observation: Observation, key: jax.Array, *, victims: Sequence[int],
                 side_knowledge: SideKnowledge = SideKnowledge()):
        return self.recover(observation, key, tuple(int(v) for v in victims), side_knowledge)


class AttackConfig(Protocol):
    """What the scenario needs of an attack config."""

    kind: ClassVar[str]
    needs_public_images: bool  # a class constant or a property of the config

    def make(self, model: Model, public: PublicKnowledge) -> Attack: ...


def check_attack_config(config) -> None:
    """Raises a ``ValueError`` naming ``attack.config`` unless ``config`` follows the protocol."""
    kind = getattr(config, "kind", None)
    if not callable(getattr(config, "make", None)) or kind not in ATTACK_KINDS:
        raise ValueError(f"attack.config must be an attack config with a `kind` in {ATTACK_KINDS} and a "
                         f"`make(model, public)` method, got {type(config).__name__}")
