"""The server side of a round as composable stages, each an ``init``/``update`` pair (DESIGN §2).

What flows through them is one typed record, :class:`RoundAggregate`. A round chains, in
this declared order:

1. per-client stages on the messages the hospitals sent: :class:`DropInvalidUpdates`
   (always: non-finite or absurdly large updates are dropped and counted), then anomaly
   screening (:class:`AnomalyScreening`), each setting weights to zero;
2. the protocol that sums them: :class:`PlaintextSum` (the server reads every message) or
   :class:`ProtocolSum` (secure aggregation or CKKS on the host; the server reads only the
   sum, and a run of the protocol that cannot finish aborts the round);
3. one aggregator that turns the round into the update the server applies:
   :class:`WeightedMean`, :class:`RobustRule` (per-client messages, plaintext only) or the
   privacy plan's noise on the clipped sum (e.g. DP-FedAvg's
   :class:`fedpriv.defenses.plans.GaussianSumNoise`).

Stages keep their own state (a key, a fitted detector), built by ``init(key)`` and returned
by every ``update``, in the manner of optax transforms. A stage with ``runs_on_host``
works on NumPy between jitted calls; the others are traced into the compiled round.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from fedpriv.defenses.anomaly import AnomalyConfig, fit_vae_detector, screen_updates, sketch_updates
from fedpriv.defenses.clipping import per_example_global_norms
from fedpriv.defenses.robust_aggregation import RobustAggregationConfig, robust_aggregate
from fedpriv.defenses.secure_aggregation import SecureAggregationError
from fedpriv.typing import Array, Params, PRNGKey


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RoundAggregate:
    """One round on the server side, as the stages pass it along.

    Attributes:
      messages: per-client messages, leaves ``[C, ...]`` (absent clients all zero), or
        ``None`` once a secure protocol has summed them (the server never holds them).
      weights: ``[C]`` aggregation weights; 0 drops a client.
      weighted_sum: ``sum_c weights[c] * messages[c]`` once a protocol has summed, else ``None``.
      total_weight: ``sum_c weights[c]`` once summed, else ``None``.
      mean_update: the update the server applies, set by the aggregator.
      aborted: ``[]`` bool, the protocol could not finish (the round changes nothing).
    """

    messages: Params | None
    weights: Array
    weighted_sum: Params | None = None
    total_weight: Array | None = None
    mean_update: Params | None = None
    aborted: Array = dataclasses.field(default_factory=lambda: jnp.asarray(False))

    def replace(self, **changes) -> "RoundAggregate":
        return dataclasses.replace(self, **changes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may read besides the aggregate: the round's public server-noise multiplier."""

    server_noise_multiplier: Array | None = None


@runtime_checkable
class ServerStage(Protocol):
    """An ``init``/``update`` pair over :class:`RoundAggregate` (see the module docstring)."""

    name: str
    runs_on_host: bool
    reads_messages: bool  # needs per-client messages (impossible after a secure protocol)

    def init(self, key: PRNGKey) -> Any: ...

    def update(self, aggregate: RoundAggregate, state: Any, context: StageContext) -> tuple[
        RoundAggregate, Any, dict]: ...


def _zero_clients(messages: Params, keep: Array) -> Params:
    return jax.tree_util.tree_map(
        lambda leaf: jnp.where(keep.reshape((-1,) + (1,) * (leaf.ndim - 1)) > 0, leaf, jnp.zeros_like(leaf)),
        messages)


def _finite_clients(messages: Params) -> Array:
    leaves = jax.tree_util.tree_leaves(messages)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
                              for leaf in leaves]), axis=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DropInvalidUpdates:
    """Drops (weight 0, message zeroed) every update with a non-finite coordinate or a global
    L2 norm above ``max_update_norm``: a bug or an attack, never averaged in. Counted."""

    max_update_norm: float = 1e6
    name = "drop_invalid"
    runs_on_host = False
    reads_messages = False  # a check each hospital's message passes on its way in, under any protocol

    def __post_init__(self):
        if not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0, got {self.max_update_norm!r}")

    def init(self, key: PRNGKey):
        return ()

    def update(self, aggregate, state, context):
        present = aggregate.weights > 0
        finite = _finite_clients(aggregate.messages)
        norms = per_example_global_norms(_zero_clients(aggregate.messages, finite))
        sane = jnp.logical_and(finite, norms <= self.max_update_norm)
        report = {"num_dropped_nonfinite": jnp.sum(jnp.logical_and(present, ~finite)),
                  "num_dropped_oversized": jnp.sum(jnp.logical_and(present, jnp.logical_and(finite, ~sane)))}
        weights = aggregate.weights * sane
        return aggregate.replace(messages=_zero_clients(aggregate.messages, weights), weights=weights), state, report


@dataclasses.dataclass
class ScreeningState:
    """The screen's memory: sketches it accepted during warm-up, then the detector fitted on them."""

    benign: list
    detector: Any = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnomalyScreening:
    """Host-side anomaly screening of per-client updates (z-scores, then a VAE).

    z-scores from the first round; with a warm-up, a VAE fitted on the updates the z-scores
    accepted in the first ``vae_warmup_rounds`` rounds screens every later round too. The
    count-sketch key is public and fixed for the run, so the detector sees every round's
    sketches in the same coordinates. No privacy guarantee (see ``screen_updates``).
    """

    config: AnomalyConfig
    name = "screening"
    runs_on_host = True
    reads_messages = True
    projection_key: PRNGKey = dataclasses.field(default_factory=lambda: jax.random.key(0))

    def init(self, key: PRNGKey) -> tuple[ScreeningState, PRNGKey]:
        return ScreeningState(benign=[]), key

    def update(self, aggregate, state, context):
        memory, key = state
        key, fit_key = jax.random.split(key)
        present = np.asarray(aggregate.weights) > 0
        report = screen_updates(aggregate.messages, present.astype(np.float32), self.projection_key, self.config,
                                memory.detector)
        accepted = np.asarray(report.accepted, bool)
        if memory.detector is None and self.config.vae_warmup_rounds:
            sketches = np.asarray(sketch_updates(aggregate.messages, self.projection_key, self.config.projection_dim))
            memory.benign.append(sketches[accepted])
            if len(memory.benign) == self.config.vae_warmup_rounds:
                memory.detector = fit_vae_detector(np.concatenate(memory.benign), fit_key)
        weights = aggregate.weights * jnp.asarray(accepted, jnp.float32)
        stats = {"num_screened_out": int(np.sum(present & ~accepted)), "screen_rejected": len(report.reasons),
                 "screen_vae": memory.detector is not None}
        return aggregate.replace(weights=weights), (memory, key), stats


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlaintextSum:
    """The server reads every message and forms the weighted sum itself."""

    name = "plaintext"
    runs_on_host = False
    reads_messages = True
    hides_messages = False

    def init(self, key: PRNGKey):
        return ()

    def update(self, aggregate, state, context):
        weighted_sum = jax.tree_util.tree_map(lambda m: jnp.tensordot(aggregate.weights, m, axes=1),
                                              aggregate.messages)
        return aggregate.replace(weighted_sum=weighted_sum, total_weight=jnp.sum(aggregate.weights)), state, {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProtocolSum:
    """A secure protocol on the host (``protocol.aggregate(vectors [K, D], key) -> (sum, report)``).

    Each sender multiplies its message by its weight and appends the weight, so the
    protocol sums both and the server learns only the totals; ``messages`` is then gone
    from the aggregate. A round with fewer than 2 senders, or whose protocol run cannot
    finish (e.g. secure aggregation with fewer survivors than its Shamir threshold),
    is aborted: nothing is revealed, the global model stays, the round is counted.
    """

    protocol: Any
    name = "protocol"
    runs_on_host = True
    reads_messages = True  # as the protocol's clients do, on the host
    hides_messages = True

    def init(self, key: PRNGKey) -> PRNGKey:
        return key

    def update(self, aggregate, state, context):
        key, run_key = jax.random.split(state)
        weights = np.asarray(jax.device_get(aggregate.weights), np.float32)
        senders = np.flatnonzero(weights > 0)
        flat = jax.vmap(lambda m: jax.flatten_util.ravel_pytree(m)[0])(aggregate.messages)
        template, unflatten = jax.flatten_util.ravel_pytree(
            jax.tree_util.tree_map(lambda leaf: leaf[0], aggregate.messages))
        report: dict = {"protocol_senders": int(senders.size)}
        summed = None
        if senders.size >= 2:
            vectors = np.asarray(jax.device_get(flat), np.float32)[senders] * weights[senders, None]
            try:
                summed, protocol_report = self.protocol.aggregate(
                    np.concatenate([vectors, weights[senders, None]], axis=1), run_key)
                report["protocol"] = protocol_report
            except SecureAggregationError as error:
                report["protocol_abort_reason"] = str(error)
        else:
            report["protocol_abort_reason"] = f"{senders.size} sender(s): a sum of fewer than 2 updates is an update"
        if summed is None:
            zero = jax.tree_util.tree_map(jnp.zeros_like, unflatten(jnp.zeros_like(template)))
            return (aggregate.replace(messages=None, weighted_sum=zero, total_weight=jnp.float32(0.0),
                                      aborted=jnp.asarray(True)), key, report)
        summed = np.asarray(summed, np.float32)
        return (aggregate.replace(messages=None, weighted_sum=unflatten(jnp.asarray(summed[:-1])),
                                  total_weight=jnp.float32(summed[-1])), key, report)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightedMean:
    """The weighted mean of the round (an all-zero update when every weight is zero)."""

    name = "mean"
    runs_on_host = False
    reads_messages = False

    def init(self, key: PRNGKey):
        return ()

    def update(self, aggregate, state, context):
        total = aggregate.total_weight
        mean = jax.tree_util.tree_map(lambda leaf: leaf / jnp.where(total > 0, total, 1.0), aggregate.weighted_sum)
        return aggregate.replace(mean_update=mean), state, {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobustRule:
    """A Byzantine-robust rule replacing the mean (reads per-client messages; equal weights)."""

    config: RobustAggregationConfig
    name = "robust_aggregation"
    runs_on_host = False
    reads_messages = True

    def init(self, key: PRNGKey):
        return ()

    def update(self, aggregate, state, context):
        present = (aggregate.weights > 0).astype(jnp.float32)
        return aggregate.replace(mean_update=robust_aggregate(aggregate.messages, present, self.config)), state, {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerPipeline:
    """The server side of a round: per-client stages, the protocol, one aggregator.

    Attributes:
      screens: per-client stages, in order (``DropInvalidUpdates`` runs first, always).
      protocol: :class:`PlaintextSum` or :class:`ProtocolSum`.
      aggregator: :class:`WeightedMean`, :class:`RobustRule` or a plan's server noise.

    Raises:
      ValueError: on construction, for an order that cannot run (a per-client reader
        after a secure protocol).
    """

    screens: tuple = ()
    protocol: Any = dataclasses.field(default_factory=PlaintextSum)
    aggregator: Any = dataclasses.field(default_factory=WeightedMean)
    max_update_norm: float = 1e6

    def __post_init__(self):
        readers = [stage.name for stage in (*self.screens, self.aggregator) if stage.reads_messages]
        if self.observes_aggregate and readers:
            raise ValueError(f"defense.protocol {self.protocol.protocol.name!r} shows the server only the sum: "
                             f"{readers} need per-client updates (use the plaintext protocol or drop them)")

    @property
    def observes_aggregate(self) -> bool:
        """True when the server reads only the sum (secure aggregation, CKKS)."""
        return self.protocol.hides_messages

    @property
    def stages(self) -> tuple:
        return (DropInvalidUpdates(max_update_norm=self.max_update_norm), *self.screens, self.protocol,
                self.aggregator)

    @property
    def runs_on_host(self) -> bool:
        return any(stage.runs_on_host for stage in self.stages)
