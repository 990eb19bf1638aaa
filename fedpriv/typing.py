"""Core types shared by every layer (DESIGN §2).

Small and explicit on purpose: every other module speaks in these types, so a new
attack, defense or data source plugs in without touching the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

Array = jax.Array
Params = Any  # a pytree of arrays
Batch = Mapping[str, Any]  # {"x": [B, ...], "y": [B]} (leading axes may be added)
PRNGKey = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Model:
    """A pure model: params travel explicitly, nothing is stored in the object.

    Attributes:
      init: ``init(key, x) -> params`` where ``x`` is a batch ``[B, *input_shape]``.
      apply: ``apply(params, x) -> logits [B, num_classes]``.
      per_example_loss: ``per_example_loss(params, batch) -> [B]`` softmax cross-entropy.
      input_shape: shape of one example, e.g. ``(32, 32, 1)``.
      num_classes: number of output classes.
      head_names: names of the top-level parameter subtrees that form the head; the rest
        is the feature extractor. This is the split point used by model partitioning.
      name: human-readable name for reports.
    """

    init: Callable[[PRNGKey, Array], Params]
    apply: Callable[[Params, Array], Array]
    per_example_loss: Callable[[Params, Batch], Array]
    input_shape: tuple[int, ...]
    num_classes: int
    head_names: tuple[str, ...]
    name: str

    def split_params(self, params: Params) -> tuple[Params, Params]:
        """Splits params into ``(feature_extractor, head)`` at the model's split point."""
        head = {k: v for k, v in params.items() if k in self.head_names}
        features = {k: v for k, v in params.items() if k not in self.head_names}
        return features, head


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClientData:
    """One round of client data, padded so every round has the same shapes.

    Leading axis = clients ``C``, then local steps ``S``, then batch ``B``. Padding
    (``example_mask == 0`` or ``client_mask == 0``) contributes exactly zero to every
    gradient, update and count.

    Attributes:
      examples: ``{"x": [C, S, B, *input_shape], "y": [C, S, B]}``.
      example_mask: ``[C, S, B]`` float32, 1 for a real example, 0 for padding.
      client_mask: ``[C]`` float32, 1 for a client that takes part in the round.
      record_ids: ``[C, S, B]`` int32 index of each example in its cohort, -1 for padding.
        Ground truth for metrics only; never given to an attack.
    """

    examples: Batch
    example_mask: Array
    client_mask: Array
    record_ids: Array

    @property
    def num_clients(self) -> int:
        return int(self.example_mask.shape[0])

    @property
    def local_steps(self) -> int:
        return int(self.example_mask.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.example_mask.shape[2])

    def client(self, index: int) -> "ClientData":
        """The data of one client, keeping a leading client axis of size 1."""
        return jax.tree_util.tree_map(lambda a: a[index : index + 1], self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProtocolMetadata:
    """Public facts about the protocol that any attacker knows.

    Attributes:
      algorithm: ``"fedsgd"`` or ``"fedavg"``.
      local_steps: number of local optimisation steps per round.
      batch_size: examples per local step (capacity, including padding).
      learning_rate: local learning rate.
      local_optimizer: ``"sgd"`` or ``"adam"``.
      local_momentum: SGD momentum or ``None``.
      input_shape: shape of one example.
      num_classes: number of classes.
      client_ids: which clients' updates the observation holds (empty if aggregated).
      private_layers: top-level parameter subtrees each hospital keeps to itself (model
        partitioning): their entries in ``Observation.params`` are the server's stale
        copy and their updates are zero, i.e. unobserved.
    """

    algorithm: str
    local_steps: int
    batch_size: int
    learning_rate: float
    input_shape: tuple[int, ...]
    num_classes: int
    client_ids: tuple[int, ...]
    local_optimizer: str = "sgd"
    local_momentum: float | None = None
    private_layers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """Exactly what one attacker sees in one round; nothing else reaches an attack.

    Attributes:
      params: the global params the server sent.
      updates: per-client updates, a pytree whose leaves are ``[C, *param_shape]`` with
        ``update = params_after_local_training - params_sent``; under secure aggregation
        or HE only the aggregate is seen and ``C == 1``.
      aggregated: True when ``updates`` holds only the aggregate.
      round_index: which round this is.
      metadata: the public protocol facts.
    """

    params: Params
    updates: Params
    aggregated: bool
    round_index: int
    metadata: ProtocolMetadata

    def update_of(self, position: int) -> Params:
        """The update at ``position`` along the observed client axis."""
        return jax.tree_util.tree_map(lambda a: a[position], self.updates)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reconstruction:
    """What an attack returns, one entry per victim.

    Attributes:
      inputs: ``[V, S, B, *input_shape]`` reconstructed inputs (best restart).
      labels: ``[V, S, B]`` labels used or recovered.
      objective: ``[V]`` final attack objective of the chosen restart.
      trace: ``[V, R, T]`` objective recorded every few iterations for every restart.
      victims: positions of the victims in the observation's client axis.
    """

    inputs: np.ndarray
    labels: np.ndarray
    objective: np.ndarray
    trace: np.ndarray
    victims: tuple[int, ...]
