"""DAGER: exact recovery of clinical notes from the span of the first attention layer's update.

The gradient of a kernel ``W [D, out]`` applied to the inputs ``z_t`` of every token ``t`` is
``sum_t z_t delta_t^T``: its column space lies in the span of the ``z_t``. In the notes
Transformer the first attention block projects ``z_t = LayerNorm(token[x_t] + position[t])``
with its query, key and value kernels, so the three kernels' update, flattened to
``[D, 3 D]``, spans exactly the inputs of the client's real tokens (padding gets zero
gradient) whenever the client's token count ``T`` is below the input dimension ``D``
(Petrov et al. 2024: their condition ``b n < d``, batch times length below the width). Then:

1. **Tokens per position.** Every vocabulary token ``v`` at every position ``p`` gives a
   candidate input ``z(v, p)``; it was used iff its distance to the span is (numerically)
   zero. A position holds as many distinct passing tokens as there are distinct tokens at
   that position across the batch; for a batch of one, exactly one, so a note is read off
   exactly, position by position.
2. **Sequences (batch > 1).** The second block's kernels span the second layer's inputs.
   DAGER extends decoder prefixes token by token, since a causal model's second-layer input
   at a position depends only on the prefix. The notes model is a bidirectional encoder: that
   input depends on the whole note, so whole candidate notes are checked against the second
   layer's span. Instead of an exhaustive search over the product of the positions'
   candidates, a coordinate search picks each position's token and the note's length to
   minimise the mean distance of the note's second-layer inputs to that span; a note at
   distance (numerically) zero is one of the batch's notes. This search is a heuristic of
   this module, not the paper's: it can stop in a local minimum (a mix of the notes).

Rank and threshold: the span's rank ``r`` is the largest gap of the singular values
``s_1 >= s_2 >= ...`` (noiseless updates are exactly rank-deficient, so the gap is many
orders of magnitude), or, under Gaussian noise of known per-coordinate stddev ``sigma``
(``SideKnowledge.noise_stddev``), the count of singular values above the noise's largest
singular value ``sigma (sqrt(D) + sqrt(N))`` (Marchenko-Pastur edge). A candidate passes
when its relative distance ``|(I - U U^T) z| / |z|`` is below ``sqrt(s_{r+1} / s_r)``: the
geometric midpoint of the subspace's perturbation (``s_{r+1}/s_r``, the size of the tilt of
the recovered span) and 1 (the order of a random vector's distance).

When ``T >= D`` (more distinct token-position pairs than the width) the span holds every
candidate and the test is void: the rank is ``D``, or more than half the candidates pass
(LayerNorm's zero-mean outputs span only ``D - 1`` dimensions). The attack then falls back,
and says so in its log: candidates are the exact token bag (the non-zero rows of the token
table's update) ranked by distance, with no guarantee.

References:
  Petrov, Dimitrov, Baader, Müller, Vechev. "DAGER: Exact Gradient Inversion for Large
  Language Models", NeurIPS 2024, arXiv:2405.15586.
  Marchenko, Pastur. "Distribution of eigenvalues for some sets of random matrices",
  Mat. Sb. 1967 (the largest singular value of a Gaussian matrix).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.attacks.common import validate_observation
from fedpriv.attacks.labels import attack_labels
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge, TokenRecoveryResult
from fedpriv.attacks.tokens import token_bag
from fedpriv.models.transformer import EncoderBlock
from fedpriv.public.clinical_words import CLS_ID, PAD_ID, SPECIAL_IDS
from fedpriv.typing import Model, Observation, Reconstruction

logger = logging.getLogger(__name__)

_PROJECTIONS = ("query", "key", "value")
_NORM = "attention_norm"
# Candidate notes are scored in chunks of this many, so one compiled program serves all.
_CHUNK = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class DagerConfig:
    """DAGER on the notes Transformer.

    Attributes:
      first_block: name of the first encoder block (its ``attention_norm`` and
        query/key/value kernels give the token test).
      second_block: name of the second block (its span checks whole notes of a batch > 1).
      embedding_path: path of the token table ``[V, D]``.
      position_path: path of the positional table ``[L (+1 with [CLS]), D]``.
      search_sweeps: most coordinate sweeps over a note's positions (batch > 1), >= 1.

    Raises:
      ValueError: naming the ``attack.config`` field, the value and what is allowed.
    """

    first_block: str = "block_0"
    second_block: str = "block_1"
    embedding_path: tuple[str, ...] = ("token_embedding", "embedding")
    position_path: tuple[str, ...] = ("position_embedding", "embedding")
    search_sweeps: int = 4

    kind: ClassVar[str] = "tokens"
    needs_public_images: ClassVar[bool] = False

    def __post_init__(self):
        for field in ("embedding_path", "position_path"):
            if isinstance(getattr(self, field), list):  # YAML gives lists; keep the config hashable
                object.__setattr__(self, field, tuple(getattr(self, field)))
            path = getattr(self, field)
            if not (isinstance(path, tuple) and path and all(isinstance(p, str) and p for p in path)):
                raise ValueError(f"attack.config.{field} must be a non-empty list of parameter names, got {path!r}")
        for field in ("first_block", "second_block"):
            if not (isinstance(getattr(self, field), str) and getattr(self, field)):
                raise ValueError(f"attack.config.{field} must be a parameter name, got {getattr(self, field)!r}")
        sweeps = self.search_sweeps
        if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
            raise ValueError(f"attack.config.search_sweeps must be an integer >= 1, got {sweeps!r}")

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """Returns ``TokenRecoveryResult``s: the recovered notes, and as the bag the tokens in them."""
        del public  # DAGER needs only the model and the observation

        def recover(observation, key, victims, side: SideKnowledge):
            del key  # deterministic
            notes = recover_notes(observation, model, self, victims=victims, noise_stddev=side.noise_stddev)
            bags = [np.setdiff1d(np.unique(ids), SPECIAL_IDS).astype(np.int32) for ids in notes.inputs]
            return TokenRecoveryResult(notes=notes, bags=bags)
        return Attack(kind=self.kind, model=model, iterations=1, recover=recover)


@dataclasses.dataclass(frozen=True)
class Span:
    """An orthonormal basis ``[D, r]`` of an update's input span and its pass threshold."""

    basis: np.ndarray
    threshold: float
    saturated: bool


def input_span(update: np.ndarray, noise_stddev: float = 0.0) -> Span:
    """The span of a layer's inputs from its kernel update ``[D, N]`` (see the module notes).

    Args:
      update: kernel updates of the projections sharing the inputs, stacked to ``[D, N]``.
      noise_stddev: per-coordinate Gaussian noise stddev on the update (0 when noiseless).

    Returns:
      A ``Span``; ``saturated`` when the rank is ``D`` (no candidate can be rejected).
    """
    update = np.asarray(update, np.float64)
    left, singular, _ = np.linalg.svd(update, full_matrices=False)
    dim = update.shape[0]
    if noise_stddev > 0:
        edge = noise_stddev * (np.sqrt(update.shape[0]) + np.sqrt(update.shape[1]))
        rank = max(int(np.sum(singular > edge)), 1)
    else:
        # Ratios s_{i+1}/s_i; a zero singular value after a non-zero one is the largest gap.
        ratios = singular[1:] / np.maximum(singular[:-1], np.finfo(np.float64).tiny)
        rank = int(np.argmin(ratios)) + 1 if ratios.size else 1
    following = singular[rank] if rank < singular.size else 0.0
    threshold = float(np.sqrt(following / singular[rank - 1])) if singular[rank - 1] > 0 else 1.0
    return Span(basis=left[:, :rank], threshold=threshold, saturated=rank >= dim)


def relative_distance(inputs: jax.Array, basis: jax.Array) -> jax.Array:
    """``|(I - U U^T) z| / |z|`` over the last axis of ``inputs``."""
    residual = inputs - (inputs @ basis) @ basis.T
    return jnp.linalg.norm(residual, axis=-1) / jnp.maximum(jnp.linalg.norm(inputs, axis=-1), 1e-30)


def _leaf(tree, path: Sequence[str], field: str):
    node = tree
    for part in path:
        if not (hasattr(node, "keys") and part in node):
            raise ValueError(f"attack.config.{field}: the model has no parameter {'/'.join(path)!r}; DAGER needs "
                             f"a token table, a positional table and a first attention block")
        node = node[part]
    return node


def _block_update(update, block: str, field: str) -> np.ndarray:
    """The block's query/key/value kernel updates as ``[D, 3 H d]``."""
    kernels = [_leaf(update, (block, name, "kernel"), field) for name in _PROJECTIONS]
    return np.concatenate([np.asarray(k).reshape(k.shape[0], -1) for k in kernels], axis=1)


def _check(observation: Observation, model: Model, config: DagerConfig, victims) -> int:
    """Raises before compute unless DAGER applies; returns the positional offset ([CLS] slots).

    The cheap checks come first; the model's shapes are traced last."""
    if observation.aggregated:
        raise ValueError("dager needs per-client updates; this observation holds only an aggregate "
                         "(secure aggregation or HE)")
    if observation.metadata.local_steps != 1:
        raise ValueError(f"dager reads the span of one gradient: it needs FedSGD (algorithm.local_steps 1), got "
                         f"local_steps={observation.metadata.local_steps}")
    params = observation.params
    table = _leaf(params, config.embedding_path, "embedding_path")
    positions = _leaf(params, config.position_path, "position_path")
    # A batch of one needs only the first block; a batch's notes are checked at the second,
    # whose inputs are computed through the first block's MLP.
    blocks = [("first_block", config.first_block)]
    if observation.metadata.batch_size > 1:
        blocks.append(("second_block", config.second_block))
        _leaf(params, (config.first_block, "mlp_hidden", "kernel"), "first_block")
    for field, block in blocks:
        _leaf(params, (block, _NORM, "scale"), field)
        _block_update(params, block, field)
    max_len = int(observation.metadata.input_shape[0])
    if table.ndim != 2 or positions.ndim != 2 or positions.shape[0] < max_len:
        raise ValueError(f"attack.config.embedding_path/position_path must name [V, D] and [L, D] tables with "
                         f"L >= max_len={max_len}, got {table.shape} and {positions.shape}")
    validate_observation(observation, model, victims)
    return int(positions.shape[0]) - max_len


def _layer_norm(params, block: str, h: jax.Array) -> jax.Array:
    return nn.LayerNorm().apply({"params": params[block][_NORM]}, h)


def candidate_distances(params, config: DagerConfig, span: Span, offset: int, max_len: int) -> np.ndarray:
    """``[max_len, V]`` relative distance of every token at every position to the span."""
    return np.array(_candidate_distances(params, jnp.asarray(span.basis, jnp.float32), config, offset, max_len))


@functools.partial(jax.jit, static_argnames=("config", "offset", "max_len"))
def _candidate_distances(params, basis, config: DagerConfig, offset: int, max_len: int):
    table = _leaf(params, config.embedding_path, "embedding_path")
    positions = _leaf(params, config.position_path, "position_path")[offset:offset + max_len]
    # One position at a time bounds the memory to one [V, D] block.
    return jax.lax.map(lambda position: relative_distance(
        _layer_norm(params, config.first_block, table + position), basis.astype(table.dtype)), positions)


def recover_notes(observation: Observation, model: Model, config: DagerConfig, *, victims: Sequence[int],
                  noise_stddev: float = 0.0) -> Reconstruction:
    """Recovers every victim's notes from the span of its first (and second) attention block.

    Args:
      observation: per-client FedSGD updates of the notes Transformer.
      model: the model the observation belongs to.
      config: the attack's settings.
      victims: positions on the observed client axis.
      noise_stddev: per-coordinate Gaussian noise stddev on each update (public DP plan).

    Returns:
      A ``Reconstruction``: ``inputs [V, 1, B, max_len]`` token ids (padding 0),
      ``objective`` the mean distance of the notes' inputs to the spans (0 when exact),
      ``labels`` the recovered label multiset (iLRG counts, ascending; not paired to notes).

    Raises:
      ValueError: an aggregate, a multi-step update, or a model without a token table,
        positional table or attention block; before any compute.

    Formal guarantees:
      None; this is an attack. Without noise and with fewer real tokens than the model
      width, a batch of one is recovered exactly (Petrov et al. 2024's span argument). A
      failed recovery does not show the notes are private.
    """
    victims = tuple(int(v) for v in victims)
    if not victims:
        raise ValueError("victims must name at least one observed client")
    offset = _check(observation, model, config, victims)
    metadata = observation.metadata
    max_len, batch = int(metadata.input_shape[0]), int(metadata.batch_size)
    labels = attack_labels(observation, model, victims, "counts")
    notes, objectives = [], []
    for victim in victims:
        update = observation.update_of(victim)
        ids, objective = _recover_victim(observation.params, update, observation, victim, config, offset,
                                         max_len, batch, noise_stddev)
        notes.append(ids.reshape(1, batch, max_len))
        objectives.append(objective)
    return Reconstruction(inputs=np.stack(notes).astype(np.int32), labels=np.asarray(labels, np.int32),
                          objective=np.asarray(objectives, np.float32),
                          trace=np.asarray(objectives, np.float32).reshape(-1, 1, 1), victims=victims)


def _recover_victim(params, update, observation, victim, config, offset, max_len, batch, noise_stddev):
    """One victim's ``[B, max_len]`` notes and their mean span distance."""
    span = input_span(_block_update(update, config.first_block, "first_block"), noise_stddev)
    distances = candidate_distances(params, config, span, offset, max_len)
    distances[:, list(SPECIAL_IDS)] = np.inf  # padding never reaches the span; [CLS] only its own slot
    if span.saturated or np.median(distances[np.isfinite(distances)]) < span.threshold:
        # T >= D (or every candidate passes): the span test is void; rank the exact bag instead.
        logger.warning("dager: the first layer's span holds every candidate (more tokens than the model width); "
                       "falling back to the token bag ranked by distance, without a guarantee")
        (bag,) = token_bag(observation, victims=[victim], embedding_path=config.embedding_path)
        distances[:, np.setdiff1d(np.arange(distances.shape[1]), bag)] = np.inf
        best = np.min(distances, axis=1)
        return _rank_assembly(distances, batch), float(np.mean(best[np.isfinite(best)])) if bag.size else 1.0
    passing = distances < span.threshold
    if batch == 1:
        # Each real position gives one distinct input, so the rank is the length (plus the
        # [CLS] slots); under noise this stays exact longer than the threshold on distances.
        length = min(max(span.basis.shape[1] - offset, 0), max_len)
    else:
        length = int(np.flatnonzero(passing.any(axis=1)).max() + 1) if passing.any() else 0
    best = np.min(distances[:length], axis=1)
    objective = float(np.mean(best)) if length else 1.0
    inside = np.arange(max_len)[:, None] < length
    if batch == 1:  # the closest token, even where noise pushed it past the threshold
        return _rank_assembly(np.where(inside, distances, np.inf), batch), objective
    second = input_span(_block_update(update, config.second_block, "second_block"), noise_stddev)
    # The second span's gap is weaker (its smallest deltas are tiny), so whole notes are
    # accepted at the first span's threshold, the floor of float32 gradients.
    return _assemble_batch(params, config, offset, passing[:length], distances[:length], second, span.threshold,
                           batch, max_len)


def _rank_assembly(distances: np.ndarray, batch: int) -> np.ndarray:
    """Note ``j`` holds each position's ``j``-th closest token (padding where none is finite)."""
    order = np.argsort(distances, axis=1)[:, :batch]
    finite = np.take_along_axis(np.isfinite(distances), order, axis=1)
    return np.where(finite, order, PAD_ID).T.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("config", "offset", "num_heads", "mlp_dim"))
def _second_layer_distances(params, ids, basis, config: DagerConfig, offset: int, num_heads: int, mlp_dim: int):
    """``[M]`` mean relative distance of notes ``ids [M, L]``' second-layer inputs to the span."""
    table = _leaf(params, config.embedding_path, "embedding_path")
    positions = _leaf(params, config.position_path, "position_path")
    full = jnp.concatenate([jnp.full((ids.shape[0], offset), CLS_ID, ids.dtype), ids], axis=1)
    mask = (full != PAD_ID).astype(table.dtype)
    h = jnp.take(table, full, axis=0) + positions[None, :full.shape[1]]
    h = EncoderBlock(num_heads, mlp_dim).apply({"params": params[config.first_block]}, h, mask)
    distances = relative_distance(_layer_norm(params, config.second_block, h), basis.astype(table.dtype))
    count = jnp.sum(mask, axis=1)
    return jnp.where(count > 0, jnp.sum(distances * mask, axis=1) / jnp.maximum(count, 1.0), 1.0)


def _scorer(params, config: DagerConfig, offset: int, basis: np.ndarray):
    """``ids [M, L] -> [M]`` distances, in chunks of 16 or 64 notes so two programs compile."""
    block = params[config.first_block]
    static = dict(config=config, offset=offset, num_heads=int(block["query"]["kernel"].shape[1]),
                  mlp_dim=int(block["mlp_hidden"]["kernel"].shape[1]))
    basis = jnp.asarray(basis)

    def score(ids: np.ndarray) -> np.ndarray:
        size = _CHUNK if len(ids) > _CHUNK // 4 else _CHUNK // 4
        total = -(-len(ids) // size) * size
        padded = np.concatenate([ids, np.broadcast_to(ids[:1], (total - len(ids), ids.shape[1]))])
        return np.concatenate([np.asarray(_second_layer_distances(params, jnp.asarray(padded[i:i + size]), basis,
                                                                  **static))
                               for i in range(0, total, size)])[:len(ids)]
    return score


def _assemble_batch(params, config, offset, passing, distances, second: Span, accept: float, batch: int,
                    max_len: int):
    """``batch`` notes checked against the second layer's span (module notes, step 2).

    Notes at distance below ``accept`` are the batch's: first every one-token change and
    truncation of a note already found is tried (notes of one template differ in a few
    words), then a coordinate search from the next of ``2 * batch`` starts (``_start``).
    Slots left over get the closest notes the searches ended in.
    """
    candidates = [np.flatnonzero(row)[np.argsort(distances[p, row])] for p, row in enumerate(passing)]
    score = _scorer(params, config, offset, second.basis)
    found, tried, others = [], set(), []
    starts = iter(range(2 * batch))
    while len(found) < batch:
        neighbours = [n for n in _neighbours(found, candidates) if n.tobytes() not in tried]
        tried.update(n.tobytes() for n in neighbours)
        if neighbours:
            scores = score(np.stack(neighbours))
            found += [n for n, value in zip(neighbours, scores) if value < accept][:batch - len(found)]
            if np.any(scores < accept):
                continue
        start = next(starts, None)
        if start is None:
            break
        ids = _start(candidates, found, start, max_len)
        known = {f.tobytes() for f in found}

        def unseen_score(notes, known=known):  # a note already found is no progress
            return np.where([n.tobytes() in known for n in notes], 1.0, score(notes))
        ids, value = _coordinate_search(unseen_score, ids, candidates, config.search_sweeps, accept)
        if value < accept:
            found.append(ids)
        else:
            others.append((value, ids))
        tried.add(ids.tobytes())
    others = [ids for _, ids in sorted(others, key=lambda pair: pair[0])]
    notes = (found + others + [np.full(max_len, PAD_ID, np.int32)] * batch)[:batch]
    objective = float(np.mean(score(np.stack(notes))))
    return np.stack(notes), objective


def _start(candidates, found, index: int, max_len: int) -> np.ndarray:
    """Start ``index`` of the search: each position's ``index``-th passing token that no found
    note uses there (every passing token belongs to some note of the batch), else its
    ``index``-th closest one."""
    ids = np.full(max_len, PAD_ID, np.int32)
    for position, options in enumerate(candidates):
        unused = options[~np.isin(options, [note[position] for note in found])]
        pool = unused if unused.size else options
        ids[position] = pool[index % pool.size] if pool.size else PAD_ID
    return ids


def _neighbours(notes, candidates):
    """Every note one passing-token replacement or one truncation away from ``notes``."""
    for note in notes:
        length = int(np.sum(note != PAD_ID))
        for position in range(length):
            for token in candidates[position]:
                if token != note[position]:
                    moved = note.copy()
                    moved[position] = token
                    yield moved
        for end in range(1, length):
            yield np.where(np.arange(note.size) < end, note, PAD_ID).astype(np.int32)


def _coordinate_search(score, ids, candidates, sweeps: int, threshold: float):
    """Greedy sweeps: the best length, then each position's best passing token, in turn."""
    value = float(score(ids[None])[0])
    longest = ids.copy()
    for _ in range(sweeps):
        start_value = value
        # Lengths: the note truncated after each position (positions keep their last token).
        lengths = np.stack([np.where(np.arange(ids.size) < end, longest, PAD_ID)
                            for end in range(1, len(candidates) + 1)])
        scores = score(lengths)
        if scores.min() < value:
            ids, value = lengths[int(np.argmin(scores))], float(scores.min())
        for position, options in enumerate(candidates):
            if options.size < 2 or ids[position] == PAD_ID:
                continue
            moves = np.repeat(ids[None], options.size, axis=0)
            moves[:, position] = options
            scores = score(moves)
            if scores.min() < value:
                ids, value = moves[int(np.argmin(scores))], float(scores.min())
                longest[position] = ids[position]
        if value < threshold or not value < start_value:
            break
    return ids, value
