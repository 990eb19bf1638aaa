"""TabLeak: tabular data leakage from observed updates.

Vero, Balunović, Dimitrov, Vechev. "TabLeak: Tabular Data Leakage in Federated Learning",
ICML 2023, arXiv 2210.01785. Three parts, all from the observation and the table's public
schema (column names, types, category counts; never a record):

1. Softmax relaxation: each categorical column is optimised as free logits
   passed through a softmax, so the one-hot block stays on the simplex and the mixed
   discrete-continuous search becomes a continuous one; numeric columns are optimised
   directly and kept inside the encoded box of their declared range. The objective is
   the cosine distance between the simulated client update (the hospitals' own client
   function, so FedSGD and multi-step FedAvg are one code path) and the observed one.
2. Pooled ensembling: ``restarts`` independent reconstructions of each batch
   are projected (argmax per categorical block), aligned to the restart with the lowest
   gradient-matching objective (the attacker's own criterion; no ground truth) by a
   Hungarian matching of records, and pooled feature by feature: the median of a
   numeric column, the most frequent category of a categorical one.
3. Entropy: the spread of the pooled ensemble is the attacker's confidence in
   each feature: the entropy of a categorical feature's category frequencies over the
   restarts, divided by ``log(categories)`` (0 = every restart agrees, 1 = uniform), and
   the differential entropy ``0.5 * log(2 pi e var)`` of a Gaussian fitted to a numeric
   feature's values over the restarts (in encoded units).

The optimisation loop is the shared ``fedpriv.attacks._optimiser``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.spatial

from fedpriv.attacks._optimiser import make_runner, run_candidates
from fedpriv.attacks.inverting_gradients import AttackCompilation
from fedpriv.attacks.common import cosine_distance, observed_part, validate_observation
from fedpriv.attacks.labels import attack_labels
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.typing import Model, Observation, ProtocolMetadata, Reconstruction

LABEL_STRATEGIES = ("known", "idlg", "counts")
COLUMN_TYPES = ("numeric", "categorical")
# Restarts under vmap, iterations in lax.scan: the fast path for MLPs (DESIGN §5).
MLP_COMPILATION = AttackCompilation(loop="scan", batching="vmap")


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """The public schema of an encoded table: ``(name, type, width)`` per column, in order."""

    columns: tuple[tuple[str, str, int], ...]

    def __post_init__(self):
        columns = tuple((str(name), str(kind), int(width)) for name, kind, width in self.columns)
        for name, kind, width in columns:
            if kind not in COLUMN_TYPES or width < 1 or (kind == "numeric" and width != 1) or (
                    kind == "categorical" and width < 2):
                raise ValueError(f"table column {name!r}: type must be 'numeric' (width 1) or 'categorical' "
                                 f"(width >= 2), got {kind!r} of width {width}")
        if not columns:
            raise ValueError("a table layout needs at least one column")
        object.__setattr__(self, "columns", columns)

    @property
    def width(self) -> int:
        return sum(width for _, _, width in self.columns)

    @property
    def is_categorical(self) -> np.ndarray:
        """``[F]`` per column."""
        return np.array([kind == "categorical" for _, kind, _ in self.columns])

    @property
    def column_of_position(self) -> np.ndarray:
        """``[D]`` the column each encoded position belongs to."""
        return np.repeat(np.arange(len(self.columns)), [width for _, _, width in self.columns])

    @property
    def numeric_positions(self) -> np.ndarray:
        """``[D]`` bool: the encoded position is a numeric column."""
        return ~self.is_categorical[self.column_of_position]


@dataclasses.dataclass(frozen=True)
class TabularRecoveryResult:
    """What a ``"tabular"`` attack returns.

    Attributes:
      records: pooled reconstructions, ``inputs [V, S, B, D]`` in the table's encoding
        (one-hot categoricals, standardised numerics).
      entropy: ``[V, S * B, F]`` the ensemble's entropy per record and column (see the
        module docstring): lower is more confident.
    """

    records: Reconstruction
    entropy: np.ndarray


@dataclasses.dataclass(frozen=True, kw_only=True)
class TabLeakConfig:
    """TabLeak's hyperparameters.

    Attributes:
      iterations: Adam steps per restart.
      learning_rate: Adam step size (divided by 10 at 3/8, 5/8 and 7/8 of the iterations).
      restarts: reconstructions pooled per victim (the ensemble), >= 1.
      temperature: softmax temperature of the categorical relaxation, > 0.
      numeric_box: the encoded range ``[-numeric_box, numeric_box]`` numeric columns are
        kept in (``fedpriv.data.tabular`` maps each declared range to ``[-2, 2]``).
      label_strategy: ``"known"`` (labels as declared side knowledge),
        ``"idlg"`` (batch of one) or ``"counts"`` (iLRG-style counts of a FedSGD batch).
      record_every: record the objective every this many iterations.
    """

    iterations: int = 1000
    learning_rate: float = 0.06
    restarts: int = 8
    temperature: float = 1.0
    numeric_box: float = 2.0
    label_strategy: str = "known"
    record_every: int = 10

    kind: ClassVar[str] = "tabular"
    needs_public_images: ClassVar[bool] = False

    def __post_init__(self):
        for name in ("iterations", "restarts", "record_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"attack.config.{name} must be an integer >= 1, got {value!r}")
        for name in ("learning_rate", "temperature", "numeric_box"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"attack.config.{name} must be a number > 0, got {getattr(self, name)!r}")
        if self.label_strategy not in LABEL_STRATEGIES:
            raise ValueError(f"attack.config.label_strategy must be one of {LABEL_STRATEGIES}, "
                             f"got {self.label_strategy!r}")

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """The attack on ``model``'s observed updates, given the table's public layout.

        Raises:
          ValueError: without a table layout in ``public`` (a non-tabular cohort), or when
            the layout's encoded width is not the model's input size; before any compute.
        """
        if public.table_layout is None:
            raise ValueError("attack.config: TabLeak needs the table's public column layout; use a tabular cohort "
                             "(data.cohort.kind tabular_ehr, breast_cancer or tabular_csv)")
        layout = TableLayout(public.table_layout)
        if (layout.width,) != tuple(model.input_shape):
            raise ValueError(f"attack.config: the table encodes {layout.width} features but model {model.name!r} "
                             f"takes inputs of shape {tuple(model.input_shape)}")

        def recover(observation, key, victims, side: SideKnowledge):
            return tableak(observation, model, self, layout, key, victims=victims, labels=side.labels,
                           compilation=public.compilation)
        return Attack(kind=self.kind, model=model, iterations=self.iterations * self.restarts, recover=recover,
                      needs_known_labels=self.label_strategy == "known")


def relax(logits: jax.Array, layout: TableLayout, temperature: float) -> jax.Array:
    """Encoded rows from free variables ``[..., D]``: numerics as they are, each
    categorical block through a softmax of temperature ``temperature`` (TabLeak)."""
    numeric = jnp.asarray(layout.numeric_positions)
    column = jnp.asarray(layout.column_of_position)
    # Numeric positions take 0 before exp so no overflow reaches a gradient through `where`.
    scaled = jnp.where(numeric, 0.0, logits) / temperature
    column_max = jax.ops.segment_max(jnp.moveaxis(scaled, -1, 0), column, num_segments=len(layout.columns))
    shifted = jnp.exp(scaled - jax.lax.stop_gradient(jnp.moveaxis(column_max, 0, -1)[..., column]))
    totals = jax.ops.segment_sum(jnp.moveaxis(shifted, -1, 0), column, num_segments=len(layout.columns))
    softmax = shifted / jnp.moveaxis(totals, 0, -1)[..., column]
    return jnp.where(numeric, logits, softmax)


def project(encoded: np.ndarray, layout: TableLayout) -> np.ndarray:
    """Valid encoded rows: each categorical block set to the one-hot of its argmax."""
    encoded = np.array(encoded, np.float32)
    start = 0
    for _, kind, width in layout.columns:
        if kind == "categorical":
            block = encoded[..., start:start + width]
            encoded[..., start:start + width] = np.eye(width, dtype=np.float32)[np.argmax(block, axis=-1)]
        start += width
    return encoded


@functools.lru_cache(maxsize=16)
def _compiled_programs(model: Model, metadata: ProtocolMetadata, config: TabLeakConfig, layout: TableLayout,
                       compilation):
    """The jitted step and evaluation of one attack setting (cached across victims and rounds)."""
    simulate = make_client_update(model, LocalTrainingConfig(
        learning_rate=metadata.learning_rate, optimizer=metadata.local_optimizer, momentum=metadata.local_momentum,
        rematerialize=metadata.local_steps > 1))
    mask = jnp.ones((metadata.local_steps, metadata.batch_size), jnp.float32)

    def match(inputs, labels, target, params):
        update, _ = simulate(params, {"x": inputs, "y": labels}, mask, jax.random.key(0))
        return cosine_distance(observed_part(update, metadata), observed_part(target, metadata))

    boundaries = {int(config.iterations * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)}
    optimizer = optax.adam(optax.piecewise_constant_schedule(config.learning_rate, boundaries))
    numeric = jnp.asarray(layout.numeric_positions)

    def step(state, candidate, params):
        logits, optimizer_state = state
        labels, target = candidate
        value, gradient = jax.value_and_grad(
            lambda z: match(relax(z, layout, config.temperature), labels, target, params))(logits)
        updates, optimizer_state = optimizer.update(gradient, optimizer_state, logits)
        logits = optax.apply_updates(logits, updates)
        logits = jnp.where(numeric, jnp.clip(logits, -config.numeric_box, config.numeric_box), logits)
        return (logits, optimizer_state), value

    return types.SimpleNamespace(optimizer=optimizer, runner=make_runner(step, compilation),
                                 relax=jax.jit(lambda logits: relax(logits, layout, config.temperature)),
                                 evaluate=jax.jit(jax.vmap(match, in_axes=(0, 0, 0, None))))


def tableak(observation: Observation, model: Model, config: TabLeakConfig, layout: TableLayout, key: jax.Array, *,
            victims: Sequence[int], labels: np.ndarray | None = None, compilation=None) -> TabularRecoveryResult:
    """Reconstructs each victim's table rows from its observed update (module docstring).

    Args:
      observation: the server's view of one round (per-client updates).
      model: the model the federation trains; its input is the encoded row.
      config: TabLeak's hyperparameters.
      layout: the table's public schema.
      key: the attack's key stream (initialisations).
      victims: positions of the victims on the observed client axis.
      labels: ``[V, S, B]`` labels when ``config.label_strategy == "known"``.
      compilation: an ``AttackCompilation`` (how loops and restarts are compiled).

    Returns:
      The pooled rows per victim and the ensemble's entropy per record and column.

    Raises:
      ValueError: an aggregate-only observation, bad victims, a layout that does not fit
        the model, missing labels; all before any compute.
    """
    if observation.aggregated:
        raise ValueError("TabLeak needs per-client updates; this observation holds only an aggregate")
    validate_observation(observation, model, victims)
    if not victims:
        raise ValueError("victims must name at least one observed client")
    if (layout.width,) != tuple(observation.metadata.input_shape):
        raise ValueError(f"the table layout encodes {layout.width} features, the observation's inputs have shape "
                         f"{tuple(observation.metadata.input_shape)}")
    metadata, victims = observation.metadata, tuple(int(v) for v in victims)
    labels = attack_labels(observation, model, victims, config.label_strategy, labels)
    compilation = MLP_COMPILATION if compilation is None else compilation
    programs = _compiled_programs(model, dataclasses.replace(metadata, client_ids=()), config, layout, compilation)
    candidate_victim = np.repeat(np.arange(len(victims)), config.restarts)
    shape = (metadata.local_steps, metadata.batch_size, layout.width)
    initial = jax.random.uniform(key, (candidate_victim.size, *shape), minval=-1.0, maxval=1.0)
    chosen = np.asarray(victims)[candidate_victim]
    targets = jax.tree_util.tree_map(lambda u: jnp.asarray(np.asarray(u)[chosen]), observation.updates)
    candidate_labels = jnp.asarray(labels[candidate_victim])
    final, values = run_candidates(programs.runner, programs.optimizer.init, initial, (candidate_labels, targets),
                                   observation.params, config.iterations, compilation)
    projected = project(np.asarray(programs.relax(final)), layout)
    objective = np.asarray(programs.evaluate(jnp.asarray(projected), candidate_labels, targets, observation.params))
    pooled, entropy = zip(*(pool_restarts(projected[candidate_victim == v].reshape(config.restarts, -1, layout.width),
                                          objective[candidate_victim == v], layout) for v in range(len(victims))))
    pooled = np.stack(pooled).reshape(len(victims), *shape)
    # The pooled rows' own objective, evaluated in the candidates' shape so nothing compiles again.
    pooled_objective = np.asarray(programs.evaluate(jnp.asarray(pooled[candidate_victim]), candidate_labels, targets,
                                                    observation.params))[::config.restarts]
    trace = np.asarray(values).T.reshape(len(victims), config.restarts, -1)[..., ::config.record_every]
    records = Reconstruction(inputs=pooled, labels=np.asarray(labels, np.int32), objective=pooled_objective,
                             trace=trace, victims=victims)
    return TabularRecoveryResult(records=records, entropy=np.stack(entropy))


def pool_restarts(candidates: np.ndarray, objectives: np.ndarray, layout: TableLayout) -> tuple[np.ndarray, np.ndarray]:
    """TabLeak's pooled ensemble of ``[R, N, D]`` projected restarts of one batch.

    Every restart's records are aligned to those of the restart with the lowest objective
    (Hungarian matching on the L1 distance, a categorical mismatch counting 1), then
    pooled: median of numerics, most frequent category. Returns the pooled ``[N, D]``
    rows and the ``[N, F]`` entropies of the module docstring.
    """
    reference = candidates[int(np.argmin(objectives))]
    # A categorical mismatch moves two one-hot entries by 1 each: weight 1/2 counts it once.
    weights = np.where(layout.numeric_positions, 1.0, 0.5)
    aligned = []
    for candidate in candidates:
        cost = scipy.spatial.distance.cdist(reference, candidate, "minkowski", p=1, w=weights)
        rows, columns = scipy.optimize.linear_sum_assignment(cost)
        aligned.append(candidate[columns[np.argsort(rows)]])
    aligned = np.stack(aligned)
    pooled, entropy, start = np.empty_like(reference), [], 0
    for _, kind, width in layout.columns:
        block = aligned[..., start:start + width]
        if kind == "categorical":
            frequency = block.mean(axis=0)
            pooled[:, start:start + width] = np.eye(width)[np.argmax(frequency, axis=-1)]
            logs = np.log(np.where(frequency > 0, frequency, 1.0))
            entropy.append(-(frequency * logs).sum(axis=-1) / np.log(width))
        else:
            pooled[:, start] = np.median(block[..., 0], axis=0)
            entropy.append(0.5 * np.log(2 * np.pi * np.e * (block[..., 0].var(axis=0) + 1e-12)))
        start += width
    return pooled, np.stack(entropy, axis=-1)
