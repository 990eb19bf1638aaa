"""Recovering the words of clinical notes from a Transformer's update.

Two steps, as in the text attacks TAG and LAMP:

1. **Bag of tokens.** A token's row of the embedding table receives a gradient only if the
   token occurs in the client's data, so the non-zero rows of the table's update are the
   set of tokens used, exactly, for FedSGD and for FedAvg with SGD or Adam (a row that no
   step touches stays zero). Padding is masked out by the model, so its row is zero too;
   likewise the positional rows past the longest note, which reveals the length.
2. **Order.** Gradient matching over a continuous relaxation: every free position holds a
   softmax over the recovered bag (for batches, also over ``[PAD]``), i.e. a convex
   combination of the bag's embeddings. The relaxed notes are run through the very client
   function the hospital ran (``make_client_update`` with the public protocol) and Adam
   minimises the distance between the simulated and the observed update. Each position
   is then projected to its most likely bag token, and a greedy discrete search tries
   every swap of two positions and every single-position replacement by a bag token (a
   random subset of ``search_moves`` of them when there are more), keeping the best by
   gradient distance, until nothing improves.

The attack sees only the ``Observation``, the model and the public vocabulary ids of the
special tokens; it never sees the notes.

References:
  Deng et al. "TAG: Gradient Attack on Transformer-based Language Models", Findings of
  EMNLP 2021, arXiv:2103.06819.
  Balunović, Dimitrov, Jovanović, Vechev. "LAMP: Extracting Text from Gradients with
  Language Model Priors", NeurIPS 2022, arXiv:2202.08827.
  Zhu, Liu, Han. "Deep Leakage from Gradients", NeurIPS 2019, arXiv:1906.08935.
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

from fedpriv.attacks._optimiser import make_runner, run_candidates
from fedpriv.attacks.common import cosine_distance, squared_distance, validate_observation
from fedpriv.attacks.inverting_gradients import AttackCompilation
from fedpriv.attacks.labels import attack_labels
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge, TokenRecoveryResult
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.keys import numpy_generator
from fedpriv.public.clinical_words import CLS_ID, PAD_ID
from fedpriv.typing import Model, Observation, ProtocolMetadata, Reconstruction

DISTANCES = ("cosine", "l2")
LABEL_STRATEGIES = ("known", "idlg")
# Relaxed bags are padded to a multiple of this, so victims with similar bags share programs.
_BAG_BUCKET = 16
# Discrete candidates are scored this many at a time by one compiled program.
_SCORE_CHUNK = 64
_NEGATIVE = -1e9


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenRecoveryConfig:
    """Hyperparameters of the token attack.

    Attributes:
      iterations: Adam steps on the relaxed notes (>= 1).
      learning_rate: Adam step size on the position logits.
      restarts: independent initialisations per victim; the best after the discrete
        search is returned.
      distance: ``"cosine"`` (1 - cosine similarity over all parameters) or ``"l2"``.
      discrete_search: run the greedy swap/replace search after projection.
      search_rounds: most accepted moves of the discrete search (>= 1).
      search_moves: most moves scored per round (>= 1); when a round has more (long notes,
        batches), a uniformly random subset of this size is scored.
      label_strategy: ``"idlg"`` (batch of one, read from the head) or ``"known"``.
      embedding_path: path of the token table in the params.
      position_path: path of the positional table, read for the note length; ``None``
        treats every position up to ``max_len`` as a possible token.
      record_every: record the relaxed objective every this many iterations.

    Raises:
      ValueError: naming the field, the value and what is allowed.
    """

    iterations: int = 300
    learning_rate: float = 0.1
    restarts: int = 2
    distance: str = "cosine"
    discrete_search: bool = True
    search_rounds: int = 30
    search_moves: int = 2048
    label_strategy: str = "idlg"
    embedding_path: tuple[str, ...] = ("token_embedding", "embedding")
    position_path: tuple[str, ...] | None = ("position_embedding", "embedding")
    record_every: int = 10

    kind: ClassVar[str] = "tokens"
    needs_public_images: ClassVar[bool] = False

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """Returns ``TokenRecoveryResult``s: the ordered notes and the token bag of each victim."""
        def recover(observation, key, victims, side: SideKnowledge):
            notes = recover_tokens(observation, model, self, key, victims=victims, labels=side.labels)
            return TokenRecoveryResult(notes=notes, bags=token_bag(observation, victims=victims,
                                                                   embedding_path=self.embedding_path))
        return Attack(kind=self.kind, model=model, iterations=self.iterations * self.restarts, recover=recover,
                      needs_known_labels=self.label_strategy == "known")

    def __post_init__(self):
        for field in ("embedding_path", "position_path"):
            if isinstance(getattr(self, field), list):  # YAML gives lists; keep the config hashable
                object.__setattr__(self, field, tuple(getattr(self, field)))
        for field in ("iterations", "restarts", "search_rounds", "search_moves", "record_every"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if not isinstance(self.discrete_search, bool):
            raise ValueError(f"discrete_search must be a bool, got {self.discrete_search!r}")
        if self.label_strategy not in LABEL_STRATEGIES:
            raise ValueError(f"label_strategy must be one of {LABEL_STRATEGIES}, got {self.label_strategy!r}")
        for field in ("embedding_path", "position_path"):
            path = getattr(self, field)
            if path is None and field == "position_path":
                continue
            if not (isinstance(path, tuple) and path and all(isinstance(p, str) and p for p in path)):
                raise ValueError(f"{field} must be a non-empty tuple of parameter names, got {path!r}")


def _leaf(tree, path: tuple[str, ...], field: str):
    node = tree
    for part in path:
        if not (hasattr(node, "keys") and part in node):
            raise ValueError(f"{field} {path!r} is not a parameter path of the observed model")
        node = node[part]
    return node


def token_bag(observation: Observation, *, victims: Sequence[int],
              embedding_path: tuple[str, ...] = ("token_embedding", "embedding"),
              ignore_ids: Sequence[int] = (PAD_ID, CLS_ID), threshold: float = 0.0) -> list[np.ndarray]:
    """The set of tokens each victim used: the non-zero rows of its token-table update.

    Args:
      observation: per-client updates of a model with a token table.
      victims: positions on the observed client axis.
      embedding_path: path of the token table ``[V, D]`` in the params.
      ignore_ids: ids left out of the bag (padding, and ``[CLS]``, which every example of a
        ``pooling="cls"`` model carries).
      threshold: a row is in the bag when its L2 norm exceeds this; ``0.0`` (exact for
        noiseless updates) or, under noise, a multiple of the noise's expected row norm.

    Returns:
      One sorted int32 array of token ids per victim.

    Raises:
      ValueError: for an aggregated observation, a bad victim or a path that is not a 2-D
        parameter.

    Formal guarantees:
      None; this is an attack. Without noise the bag is exact: every token of the victim's
      data and nothing else (barring a real token whose gradient row is exactly zero,
      which has probability zero). Under DP noise every row is perturbed and the bag is
      no longer read off this way.
    """
    if observation.aggregated:
        raise ValueError("token_bag needs per-client updates; this observation holds only an aggregate")
    table = _leaf(observation.updates, embedding_path, "embedding_path")
    if table.ndim != 3:
        raise ValueError(f"embedding_path {embedding_path!r} must name a [V, D] table, got update shape "
                         f"{tuple(table.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    victims = _check_victims(victims, table.shape[0])
    rows = table[np.asarray(victims)]
    # Exact zero test when noiseless: a norm could underflow for a real but tiny row.
    used = np.array(jnp.any(rows != 0, axis=-1) if threshold == 0 else jnp.linalg.norm(rows, axis=-1) > threshold)
    used[:, np.asarray(list(ignore_ids), np.int64)] = False
    return [np.flatnonzero(row).astype(np.int32) for row in used]


def note_lengths(observation: Observation, *, victims: Sequence[int],
                 position_path: tuple[str, ...] = ("position_embedding", "embedding")) -> np.ndarray:
    """Length of each victim's longest note: the last non-zero row of the positional update.

    A positional table longer than ``max_len`` holds leading summary slots (``[CLS]``),
    which are not counted.

    Returns:
      ``[V]`` int32 lengths in ``[0, max_len]``.
    """
    if observation.aggregated:
        raise ValueError("note_lengths needs per-client updates; this observation holds only an aggregate")
    table = _leaf(observation.updates, position_path, "position_path")
    max_len = int(observation.metadata.input_shape[0])
    offset = table.shape[1] - max_len
    victims = _check_victims(victims, table.shape[0])
    used = np.asarray(jnp.any(table[np.asarray(victims)] != 0, axis=-1))[:, offset:]
    last = np.where(used.any(axis=1), used.shape[1] - np.argmax(used[:, ::-1], axis=1), 0)
    return last.astype(np.int32)


def _check_victims(victims, num_observed: int) -> tuple[int, ...]:
    victims = tuple(int(v) for v in victims)
    if not victims:
        raise ValueError("victims must name at least one observed client")
    bad = [v for v in victims if not 0 <= v < num_observed]
    if bad:
        raise ValueError(f"victims {bad} are not positions among the {num_observed} observed updates")
    return victims


@functools.lru_cache(maxsize=16)
def _programs(model: Model, metadata: ProtocolMetadata, config: TokenRecoveryConfig, vocabulary_size: int):
    """The jitted programs of one attack setting, cached across victims and rounds."""
    simulate = make_client_update(model, LocalTrainingConfig(
        learning_rate=metadata.learning_rate, optimizer=metadata.local_optimizer, momentum=metadata.local_momentum))
    example_mask = jnp.ones((metadata.local_steps, metadata.batch_size), jnp.float32)
    distance = cosine_distance if config.distance == "cosine" else squared_distance
    optimizer = optax.adam(config.learning_rate)

    def matching(inputs, labels, target, params):
        update, _ = simulate(params, {"x": inputs, "y": labels}, example_mask, jax.random.key(0))
        return distance(update, target)

    def relaxed_inputs(logits, candidates, free):
        # logits [S, B, L, K] over candidate ids [K]; fixed positions are one-hot padding.
        weights = jax.nn.softmax(logits, axis=-1)
        relaxed = weights @ jax.nn.one_hot(candidates, vocabulary_size, dtype=weights.dtype)
        padding = jax.nn.one_hot(PAD_ID, vocabulary_size, dtype=weights.dtype)
        return jnp.where(free[..., None], relaxed, padding)

    def relaxed_objective(logits, candidates, free, candidate_mask, labels, target, params):
        logits = jnp.where(candidate_mask, logits, _NEGATIVE)
        return matching(relaxed_inputs(logits, candidates, free), labels, target, params)

    def step(state, candidate, params):
        logits, optimizer_state = state
        value, gradient = jax.value_and_grad(relaxed_objective)(logits, *candidate, params)
        updates, optimizer_state = optimizer.update(gradient, optimizer_state, logits)
        return (optax.apply_updates(logits, updates), optimizer_state), value

    def score_chunk(token_ids, labels, target, params):
        # token_ids [_SCORE_CHUNK, S, B, L]; vmapped halves bound the memory of the simulations.
        return jax.lax.map(lambda ids: matching(ids, labels, target, params), token_ids,
                           batch_size=_SCORE_CHUNK // 2)

    # One restart at a time, all iterations in one scan (the shared optimiser's loop).
    compilation = AttackCompilation(loop="scan", batching="loop", scan_chunk=config.iterations)
    return types.SimpleNamespace(runner=make_runner(step, compilation), compilation=compilation,
                                 optimizer=optimizer, score_chunk=jax.jit(score_chunk))


def _search_moves(ids: np.ndarray, free: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Every note one move away: swap two free positions of one record, or replace one."""
    flat_ids = ids.reshape(-1, ids.shape[-1])
    flat_free = free.reshape(flat_ids.shape)
    moves = []
    for record in range(flat_ids.shape[0]):
        positions = np.flatnonzero(flat_free[record])
        for a_index, a in enumerate(positions):
            for b in positions[a_index + 1:]:
                if flat_ids[record, a] != flat_ids[record, b]:
                    moved = flat_ids.copy()
                    moved[record, a], moved[record, b] = flat_ids[record, b], flat_ids[record, a]
                    moves.append(moved)
            for token in candidates:
                if token != flat_ids[record, a]:
                    moved = flat_ids.copy()
                    moved[record, a] = token
                    moves.append(moved)
    if not moves:
        return np.empty((0, *ids.shape), ids.dtype)
    return np.stack(moves).reshape(-1, *ids.shape)


def _best_restart(programs, config: TokenRecoveryConfig, candidates, free, labels, target, params, key):
    """One victim's notes: each restart's relaxed search (then the discrete search), the
    best by the gradient-matching objective; returns ``(ids, objective, traces)``."""
    width = -(-candidates.size // _BAG_BUCKET) * _BAG_BUCKET
    padded_candidates = np.full(width, PAD_ID, np.int32)
    padded_candidates[: candidates.size] = candidates
    candidate_mask = np.arange(width) < candidates.size
    candidate = (jnp.asarray(padded_candidates), jnp.asarray(free), jnp.asarray(candidate_mask), labels, target)
    best, traces = None, []
    for restart_key in jax.random.split(key, config.restarts):
        initial = 0.1 * jax.random.normal(restart_key, (*free.shape, width))
        logits, values = run_candidates(programs.runner, programs.optimizer.init, initial[None],
                                        jax.tree_util.tree_map(lambda a: a[None], candidate), params,
                                        config.iterations, programs.compilation)
        logits, values = jnp.where(candidate_mask, logits[0], _NEGATIVE), values[:, 0]
        traces.append(np.asarray(values)[:: config.record_every])
        ids = np.where(free, padded_candidates[np.asarray(jnp.argmax(logits, axis=-1))], PAD_ID).astype(np.int32)
        value = float(_score(programs, ids[None], ids, labels, target, params)[0])
        if config.discrete_search:
            ids, value = _discrete_search(programs, ids, value, free, candidates, labels, target, params, config,
                                          numpy_generator(restart_key))
        if best is None or value < best[1]:
            best = (ids, value)
    return best[0], best[1], np.stack(traces)


def recover_tokens(observation: Observation, model: Model, config: TokenRecoveryConfig, key: jax.Array,
                   *, victims: Sequence[int], labels: np.ndarray | None = None) -> Reconstruction:
    """Recovers each victim's notes (token ids, in order) from its observed update.

    Args:
      observation: the server's view of one round (per-client updates) of a model that
        takes ``[B, max_len]`` token ids and ``[B, max_len, V]`` relaxed rows, such as
        ``fedpriv.models.transformer``.
      model: the model the federation trains.
      config: attack hyperparameters.
      key: the attack's key stream (initialisations).
      victims: positions of the victims on the observed client axis.
      labels: ``[V, S, B]`` labels when ``config.label_strategy == "known"``.

    Returns:
      A ``Reconstruction`` whose ``inputs`` are ``[V, S, B, max_len]`` int32 token ids
      (padding 0), ``objective`` the gradient distance of the returned notes and ``trace``
      the relaxed objective ``[V, R, T]``.

    Raises:
      ValueError: bad victims, a mismatched or aggregated observation, missing labels, or a
        parameter path the model lacks; all before any compute.

    Formal guarantees:
      None; this is an attack. Its success bounds nothing from below: a failed recovery
      does not show the notes are private.
    """
    validate_observation(observation, model, victims)
    if observation.aggregated:
        raise ValueError("recover_tokens needs per-client updates; this observation holds only an aggregate")
    metadata = observation.metadata
    victims = _check_victims(victims, jax.tree_util.tree_leaves(observation.updates)[0].shape[0])
    table = _leaf(observation.params, config.embedding_path, "embedding_path")
    if table.ndim != 2:
        raise ValueError(f"embedding_path {config.embedding_path!r} must name a [V, D] table, got shape {table.shape}")
    vocabulary_size = int(table.shape[0])
    max_len = int(metadata.input_shape[0])
    data_shape = (metadata.local_steps, metadata.batch_size)
    labels = attack_labels(observation, model, victims, config.label_strategy, labels)
    try:
        jax.eval_shape(model.apply, observation.params, jnp.zeros((1, max_len, vocabulary_size)))
    except Exception as error:  # noqa: BLE001 - reported with what the model lacks
        raise ValueError(f"model {model.name!r} does not take relaxed inputs [B, max_len, vocabulary_size]; "
                         f"the token attack needs them: {error}") from error

    bags = token_bag(observation, victims=victims, embedding_path=config.embedding_path)
    if config.position_path is not None:
        lengths = note_lengths(observation, victims=victims, position_path=config.position_path)
    else:
        lengths = np.full(len(victims), max_len, np.int32)
    programs = _programs(model, dataclasses.replace(metadata, client_ids=()), config, vocabulary_size)
    single_record = data_shape == (1, 1)

    inputs, objectives, traces = [], [], []
    for index, victim in enumerate(victims):
        # With one record the length is exact and padding only trails; with several,
        # records may be shorter than the longest, so [PAD] is a candidate everywhere.
        candidates = bags[index] if single_record else np.concatenate([[PAD_ID], bags[index]]).astype(np.int32)
        if candidates.size == 0:
            candidates = np.array([PAD_ID], np.int32)
        free = np.broadcast_to(np.arange(max_len) < lengths[index], (*data_shape, max_len))
        target = jax.tree_util.tree_map(lambda u: u[victim], observation.updates)
        ids, value, trace = _best_restart(programs, config, candidates, free, jnp.asarray(labels[index]), target,
                                          observation.params, jax.random.fold_in(key, victim))
        inputs.append(ids)
        objectives.append(value)
        traces.append(trace)
    return Reconstruction(inputs=np.stack(inputs), labels=np.asarray(labels, np.int32),
                          objective=np.asarray(objectives, np.float32), trace=np.stack(traces),
                          victims=victims)


def _score(programs, notes, filler, labels, target, params) -> np.ndarray:
    """Gradient distances of ``notes [M, S, B, L]``, scored in fixed chunks (the last one
    filled up with copies of ``filler``), so every round of every victim reuses one
    compiled program."""
    count = notes.shape[0]
    total = -(-count // _SCORE_CHUNK) * _SCORE_CHUNK
    padded = np.concatenate([notes, np.broadcast_to(filler, (total - count, *filler.shape))])
    scores = [programs.score_chunk(jnp.asarray(padded[start:start + _SCORE_CHUNK]), labels, target, params)
              for start in range(0, total, _SCORE_CHUNK)]
    return np.concatenate([np.asarray(chunk) for chunk in scores])[:count]


def _discrete_search(programs, ids, value, free, candidates, labels, target, params, config, generator):
    """Greedy descent over swaps and replacements, one accepted move per round."""
    for _ in range(config.search_rounds):
        moves = _search_moves(ids, free, candidates)
        if moves.shape[0] == 0:
            break
        if moves.shape[0] > config.search_moves:
            moves = moves[np.sort(generator.choice(moves.shape[0], config.search_moves, replace=False))]
        scores = _score(programs, moves, ids, labels, target, params)
        best = int(np.argmin(scores))
        if not scores[best] < value:
            break
        ids, value = moves[best], float(scores[best])
    return ids, value
