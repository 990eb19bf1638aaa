"""Recovering the ICD-10-CM codes of EHR records from embedding-bag updates.

The attacks read an ``Observation`` of an ``fedpriv.models.embedding_bag`` model (its
parameter names are documented there) and public knowledge only:

* ``code_set``: the non-zero rows of the embedding-table update are exactly the tokens the
  client used. Absent rows get no gradient at all, so the test is ``row != 0`` and the set
  is exact for FedSGD and for FedAvg with SGD or Adam, any batch size.
* ``code_counts``: for one record, every row is ``count_c`` times the same vector
  ``dL/dpooled``, recovered from the first layer after pooling (``W1 @ db1``), so the
  counts follow from a projection (sum pooling) or from the smallest integer multiple
  that makes every ratio integral (mean pooling, or FedAvg where the scale is unknown).
* ``frozen_embedding_codes``: when the table is not trained (not in the update), the
  pooled vector of one record is read off the first dense layer (``dW1 = p db1^T``), then
  decomposed by non-negative orthogonal matching pursuit over the public table.
* ``noisy_code_set``: under DP noise, a row norm is compared with the chi-square
  quantile of pure noise, which fixes the per-code false-positive rate.
* ``refine_with_ontology``: candidates of moderate evidence are accepted when the public
  co-occurrence prior supports them given the confident codes, cancer codes are snapped to
  the subtype of the confident ones, and one-per-record token families (age, sex, each
  lab) keep only their best token.

References:
  Melis, Song, De Cristofaro, Shmatikov. "Exploiting Unintended Feature Leakage in
  Collaborative Learning", IEEE S&P 2019, arXiv:1805.04049 (words from embedding updates).
  Phong et al. "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption",
  IEEE TIFS 2018, ePrint 2017/715 (inputs from a fully-connected layer with bias).
  Pati, Rezaiifar, Krishnaprasad. "Orthogonal Matching Pursuit", Asilomar 1993; Bruckstein,
  Elad, Zibulevsky. "On the uniqueness of nonnegative sparse solutions", IEEE TIT 2008.
  Gupta et al. "Recovering Private Text in Federated Learning of Language Models",
  NeurIPS 2022, arXiv:2205.08514 (bag of words from embedding gradients).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from fedpriv.attacks.common import validate_observation
from fedpriv.public import icd10
from fedpriv.typing import Model, Observation

POOLINGS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class CodeRecovery:
    """Recovered tokens of each victim.

    Attributes:
      present: ``[V, vocabulary_size]`` bool, the recovered set (padding id 0 never set).
      counts: ``[V, vocabulary_size]`` int32 recovered counts, or ``None`` when the attack
        recovers sets only.
      scores: ``[V, vocabulary_size]`` float32 evidence per token (larger = surer; the
        meaning is given by each attack).
      victims: positions of the victims on the observation's client axis.
    """

    present: np.ndarray
    counts: np.ndarray | None
    scores: np.ndarray
    victims: tuple[int, ...]

    def ids(self, index: int) -> np.ndarray:
        """Sorted recovered token ids of the ``index``-th victim."""
        return np.flatnonzero(self.present[index]).astype(np.int32)


def _table_update(observation: Observation, victims: np.ndarray) -> jax.Array:
    try:
        rows = observation.updates["embedding"]["embedding"]
    except (KeyError, TypeError):
        raise ValueError("observation has no update at params['embedding']['embedding']; "
                         "these attacks need an embedding_bag model") from None
    return jnp.asarray(rows)[victims]


def _require_sgd(observation: Observation, name: str) -> None:
    # Adam divides each coordinate by its own running scale, which destroys the
    # proportionality between rows (and between a layer's weight and bias updates).
    if observation.metadata.local_optimizer != "sgd":
        raise ValueError(f"{name} needs local_optimizer 'sgd' (rows stay proportional to counts), got "
                         f"{observation.metadata.local_optimizer!r}")


def _first_layer_name(observation: Observation) -> str:
    return "dense_0" if "dense_0" in observation.params else "head"


def _check(observation: Observation, model: Model, victims: Sequence[int]) -> np.ndarray:
    victims = tuple(int(v) for v in victims)
    if not victims:
        raise ValueError("victims must name at least one position on the observed client axis, got ()")
    validate_observation(observation, model, victims)
    return np.asarray(victims)


@jax.jit
def _nonzero_rows(rows: jax.Array) -> jax.Array:
    norms = jnp.sqrt(jnp.sum(rows * rows, axis=-1))
    return norms.at[..., 0].set(0.0)


def code_set(observation: Observation, model: Model, victims: Sequence[int]) -> CodeRecovery:
    """The exact token set of each victim: the non-zero rows of its embedding update.

    Args:
      observation: what the server saw (FedSGD or FedAvg, any batch size, no DP noise).
      model: the ``embedding_bag`` model (public).
      victims: positions on the observed client axis.

    Returns:
      ``CodeRecovery`` with ``present = row norm > 0``, ``scores`` = row norms, no counts.
      Under secure aggregation (``observation.aggregated``) the set is the union over the
      clients.

    Raises:
      ValueError: if the observation does not fit the model or a victim is out of range.
    """
    victims = _check(observation, model, victims)
    norms = np.asarray(_nonzero_rows(_table_update(observation, victims)))
    return CodeRecovery(present=norms > 0, counts=None, scores=norms.astype(np.float32),
                        victims=tuple(int(v) for v in victims))


@functools.partial(jax.jit, static_argnames=("max_count",))
def _smallest_integer_multiple(ratios: jax.Array, present: jax.Array, max_count: int,
                               tolerance: float) -> jax.Array:
    """Counts ``k * ratios / min(ratios)`` for the smallest ``k`` that makes all near-integral.

    The rarest token of a record occurs ``k`` times; trying ``k = 1, 2, ...`` finds the
    smallest common scale of the ratios, i.e. the counts when some token occurs once (a
    gcd of the counts above one cannot be told from a common scale).
    """
    smallest = jnp.min(jnp.where(present, ratios, jnp.inf), axis=-1, keepdims=True)
    candidates = jnp.arange(1, max_count + 1, dtype=ratios.dtype)
    scaled = ratios[..., None, :] / smallest[..., None, :] * candidates[:, None]  # [..., K, V]
    error = jnp.max(jnp.where(present[..., None, :], jnp.abs(scaled - jnp.round(scaled)), 0.0), axis=-1)
    first = jnp.argmax(error < tolerance, axis=-1)
    best = jnp.where(jnp.any(error < tolerance, axis=-1), first, jnp.argmin(error, axis=-1))
    chosen = jnp.take_along_axis(scaled, best[..., None, None], axis=-2)[..., 0, :]
    return jnp.where(present, jnp.maximum(jnp.round(chosen), 1.0), 0.0).astype(jnp.int32)


@jax.jit
def _projected_counts(rows: jax.Array, kernel: jax.Array, bias_update: jax.Array) -> jax.Array:
    # Each row is -count_c * dL/dpooled and dL/dpooled = W1 @ dL/db1 = -W1 @ db1_update,
    # so count_c = <row, W1 @ db1_update> / |W1 @ db1_update|^2.
    direction = jnp.einsum("dh,vh->vd", kernel, bias_update)
    return jnp.einsum("vtd,vd->vt", rows, direction) / jnp.sum(direction**2, axis=-1, keepdims=True)


def code_counts(observation: Observation, model: Model, victims: Sequence[int], *,
                pooling: str = "sum", max_count: int = 64, tolerance: float = 0.05) -> CodeRecovery:
    """Token counts of a single record from the row norms of its embedding update.

    With one local step and sum pooling the counts are exact projections onto
    ``dL/dpooled`` (recovered from the first layer after pooling); otherwise (mean
    pooling, or several local SGD steps on the same record, momentum allowed) rows are only
    known up to a common scale and the counts are the smallest integer vector
    proportional to them.

    Args:
      observation: one record per victim (``metadata.batch_size == 1``), no DP noise.
      model: the ``embedding_bag`` model.
      victims: positions on the observed client axis.
      pooling: the model's pooling, ``"sum"`` or ``"mean"`` (public architecture).
      max_count: largest count of the rarest token tried by the integer search.
      tolerance: largest distance to an integer accepted by the integer search.

    Returns:
      ``CodeRecovery`` with ``counts`` and ``scores`` = the unrounded count estimates.

    Raises:
      ValueError: if the batch size is not 1, the local optimizer is not SGD, ``pooling``
        is unknown, or the observation does not fit the model.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if observation.metadata.batch_size != 1:
        raise ValueError("code_counts needs one record per update (batch_size 1), got batch_size="
                         f"{observation.metadata.batch_size}; use code_set for batches")
    _require_sgd(observation, "code_counts")
    victims = _check(observation, model, victims)
    rows = _table_update(observation, victims).at[:, 0].set(0.0)
    present = _nonzero_rows(rows) > 0
    if observation.metadata.local_steps == 1:
        # The learning rate scales rows and the bias update alike, so it cancels.
        layer = _first_layer_name(observation)
        estimates = _projected_counts(rows, jnp.asarray(observation.params[layer]["kernel"]),
                                      jnp.asarray(observation.updates[layer]["bias"])[victims])
    else:
        estimates = jnp.sqrt(jnp.sum(rows * rows, axis=-1))
    if pooling == "sum" and observation.metadata.local_steps == 1:
        counts = jnp.where(present, jnp.maximum(jnp.round(estimates), 1.0), 0.0).astype(jnp.int32)
    else:
        counts = _smallest_integer_multiple(estimates, present, max_count, tolerance)
    return CodeRecovery(present=np.asarray(present), counts=np.asarray(counts),
                        scores=np.asarray(estimates, dtype=np.float32), victims=tuple(int(v) for v in victims))


@jax.jit
def _pooled_from_first_layer(kernel_update: jax.Array, bias_update: jax.Array) -> jax.Array:
    # One record: dW1 = p g^T and db1 = g, so p = dW1 g / |g|^2 (the sign of the update cancels).
    return jnp.einsum("vdh,vh->vd", kernel_update, bias_update) / jnp.sum(
        bias_update**2, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("max_atoms", "restarts"))
def nonnegative_omp(target: jax.Array, atoms: jax.Array, max_atoms: int,
                    relative_tolerance: float = 1e-4, restarts: int = 1) -> jax.Array:
    """Non-negative orthogonal matching pursuit: ``target ~= atoms.T @ c`` with sparse ``c >= 0``.

    Each step adds the atom most positively correlated with the residual (atoms are
    compared after normalisation) and refits all chosen coefficients by least squares;
    it stops once the residual is below ``relative_tolerance * |target|``. Greedy pursuit
    fails when a wrong atom wins an early step; with ``restarts > 1`` the first atom is
    forced to each of the ``restarts`` best-correlated atoms in turn, and the run that
    explains the target with the fewest atoms wins (a wrong early pick needs many more).

    Args:
      target: ``[D]`` vector to decompose.
      atoms: ``[A, D]`` dictionary (e.g. an embedding table).
      max_atoms: most atoms selected (static).
      relative_tolerance: stopping residual relative to the target's norm.
      restarts: number of forced first atoms tried (static), >= 1.

    Returns:
      ``[A]`` coefficients, zero outside the selected support, negatives clipped to 0.

    References:
      Pati, Rezaiifar, Krishnaprasad, "Orthogonal Matching Pursuit", Asilomar 1993;
      Bruckstein, Elad, Zibulevsky, IEEE TIT 54(11) 2008 (non-negative sparse solutions).
    """
    norms = jnp.maximum(jnp.linalg.norm(atoms, axis=-1), 1e-12)
    stop = relative_tolerance * jnp.linalg.norm(target)

    def run(first):
        def step(state, index):
            support, used, coefficients, residual = state
            done = jnp.linalg.norm(residual) <= stop
            scores = jnp.where(jnp.zeros(atoms.shape[0], bool).at[support].max(used), -jnp.inf,
                               atoms @ residual / norms)
            pick = jnp.where(index == 0, first, jnp.argmax(scores))
            add = ~done & (scores[pick] > 0)
            slot = jnp.sum(used)
            support = jnp.where(add, support.at[slot].set(pick), support)
            used = jnp.where(add, used.at[slot].set(True), used)
            chosen = atoms[support] * used[:, None]  # [K, D]; unused slots are zero rows
            gram = chosen @ chosen.T + jnp.diag(jnp.where(used, 0.0, 1.0))
            coefficients = jnp.linalg.solve(gram, chosen @ target) * used
            residual = target - coefficients @ chosen
            return (support, used, coefficients, residual), None

        initial = (jnp.zeros(max_atoms, jnp.int32), jnp.zeros(max_atoms, bool),
                   jnp.zeros(max_atoms, target.dtype), target)
        (support, used, coefficients, residual), _ = jax.lax.scan(step, initial, jnp.arange(max_atoms))
        found = jnp.zeros(atoms.shape[0], target.dtype).at[support].add(
            jnp.where(used, jnp.maximum(coefficients, 0.0), 0.0))
        converged = jnp.linalg.norm(residual) <= stop
        # Converged runs rank by atoms used; the others after them, by residual.
        rank = jnp.where(converged, jnp.sum(used).astype(target.dtype), max_atoms + 1 + jnp.linalg.norm(residual))
        return found, rank

    firsts = jax.lax.top_k(atoms @ target / norms, restarts)[1]
    found, rank = jax.vmap(run)(firsts)
    return found[jnp.argmin(rank)]


def frozen_embedding_codes(observation: Observation, model: Model, victims: Sequence[int], *,
                           embedding_table=None, pooling: str = "sum", max_atoms: int = 64,
                           restarts: int = 8, max_count: int = 64, tolerance: float = 0.1) -> CodeRecovery:
    """Codes and counts of a single record when the embedding table is frozen.

    The pooled vector ``p`` is read off the first dense layer after pooling
    (``p = dW1 db1 / |db1|^2``, exact for one record and one gradient), then decomposed
    over the table rows by ``nonnegative_omp``: sum pooling gives ``p = sum_c count_c E_c``.

    Args:
      observation: FedSGD, one record per victim (batch size 1), no DP noise; the table
        update may be zero or anything (it is not read).
      model: the ``embedding_bag`` model.
      victims: positions on the observed client axis.
      embedding_table: the public ``[vocabulary_size, D]`` table the client embeds with
        (e.g. public pre-trained code embeddings); ``None`` uses the table in the sent params.
      pooling: ``"sum"`` or ``"mean"`` (public architecture).
      max_atoms: most distinct tokens decomposed.
      restarts: forced first atoms tried by ``nonnegative_omp`` (more = slower, surer).
      max_count: largest count of the rarest token tried under mean pooling.
      tolerance: distance to an integer accepted when rounding coefficients to counts.

    Returns:
      ``CodeRecovery`` with ``counts`` and ``scores`` = the OMP coefficients.

    Raises:
      ValueError: for a batch size or step count other than 1, an unknown pooling, or an
        observation that does not fit the model.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    metadata = observation.metadata
    if metadata.batch_size != 1 or metadata.local_steps != 1:
        raise ValueError("frozen_embedding_codes needs one gradient of one record (batch_size 1, "
                         f"local_steps 1), got batch_size={metadata.batch_size}, local_steps={metadata.local_steps}")
    _require_sgd(observation, "frozen_embedding_codes")
    victims = _check(observation, model, victims)
    table = jnp.asarray(observation.params["embedding"]["embedding"] if embedding_table is None
                        else embedding_table)
    layer = _first_layer_name(observation)
    pooled = _pooled_from_first_layer(jnp.asarray(observation.updates[layer]["kernel"])[victims],
                                      jnp.asarray(observation.updates[layer]["bias"])[victims])
    # Row 0 is padding and never part of a record: exclude it from the dictionary.
    atoms = table.at[0].set(0.0)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    coefficients = jax.vmap(lambda p: nonnegative_omp(p, atoms, max_atoms, restarts=restarts))(pooled)
    present = coefficients > tolerance * jnp.max(coefficients, axis=-1, keepdims=True) / max_count
    if pooling == "sum":
        present = present & (coefficients >= 0.5)
        counts = jnp.where(present, jnp.round(coefficients), 0.0).astype(jnp.int32)
    else:
        counts = _smallest_integer_multiple(coefficients, present, max_count, tolerance)
    return CodeRecovery(present=np.asarray(counts > 0), counts=np.asarray(counts),
                        scores=np.asarray(coefficients, dtype=np.float32), victims=tuple(int(v) for v in victims))


@jax.jit
def _chi_square_evidence(rows: jax.Array, noise_stddev: jax.Array) -> jax.Array:
    """``-log P(chi2_D >= |row|^2 / s^2)``: evidence against "this row is pure noise"."""
    statistic = jnp.sum(rows * rows, axis=-1) / noise_stddev**2
    evidence = -jax.scipy.stats.chi2.logsf(statistic, rows.shape[-1])
    return evidence.at[..., 0].set(0.0)


def noisy_code_set(observation: Observation, model: Model, victims: Sequence[int], *,
                   noise_stddev: float, false_positive_rate: float = 1e-3) -> CodeRecovery:
    """The token set under Gaussian DP noise, by a chi-square test on each table row.

    A token absent from the client's data has a table-update row of pure noise, so
    ``|row|^2 / s^2 ~ chi2(D)``; the row is declared present when that statistic exceeds
    the ``1 - false_positive_rate`` quantile.

    Args:
      observation: what the server saw (any algorithm and batch size).
      model: the ``embedding_bag`` model.
      victims: positions on the observed client axis.
      noise_stddev: per-coordinate noise stddev in the update (``update_noise_stddev``).
      false_positive_rate: probability, for each absent token, of declaring it present.

    Returns:
      ``CodeRecovery`` whose ``scores`` are ``-log p-value`` of the chi-square test (the
      set is ``scores > -log(false_positive_rate)``), no counts.

    Raises:
      ValueError: for a non-positive stddev, a rate outside (0, 1), or a bad observation.

    Formal guarantees:
      If the noise is i.i.d. Gaussian with exactly ``noise_stddev`` per coordinate and
      independent of the data (as DP-SGD's is), each absent token is reported with
      probability exactly ``false_positive_rate``, so the expected number of false codes
      is ``false_positive_rate * (vocabulary_size - 1 - true set size)``. Nothing is
      promised for recall, which depends on the clipped signal per row; DP bounds how
      much any record changes this test's outcome, it does not make it zero.
    """
    if not (isinstance(noise_stddev, (int, float)) and math.isfinite(noise_stddev) and noise_stddev > 0):
        raise ValueError(f"noise_stddev must be a finite number > 0, got {noise_stddev!r}")
    if not (isinstance(false_positive_rate, float) and 0.0 < false_positive_rate < 1.0):
        raise ValueError(f"false_positive_rate must be a float in (0, 1), got {false_positive_rate!r}")
    victims = _check(observation, model, victims)
    evidence = np.asarray(_chi_square_evidence(_table_update(observation, victims), jnp.float32(noise_stddev)))
    return CodeRecovery(present=evidence > -math.log(false_positive_rate), counts=None,
                        scores=evidence.astype(np.float32), victims=tuple(int(v) for v in victims))


def chi_square_threshold(noise_stddev: float, embedding_dim: int, false_positive_rate: float) -> float:
    """The row-norm threshold of ``noisy_code_set``: ``s * sqrt(chi2.isf(rate, D))``."""
    return float(noise_stddev * math.sqrt(scipy.stats.chi2.isf(false_positive_rate, embedding_dim)))


@functools.partial(jax.jit, static_argnames=("num_subtypes", "single_record"))
def _refine(scores, accept, candidate, prior_weight, group, log_lift, subtype, exclusive, num_subtypes,
            single_record):
    confident = scores >= accept  # [V, T]
    considered = scores >= candidate
    # Work on groups (categories), not tokens: [V, G, G] instead of [V, T, T].
    safe_group = jnp.where(group >= 0, group, 0)
    confident_groups = jnp.zeros((scores.shape[0], log_lift.shape[0]), bool).at[:, safe_group].max(
        confident & (group >= 0)[None, :])
    group_support = jnp.max(jnp.where(confident_groups[:, None, :], log_lift[None], 0.0), axis=-1)  # [V, G]
    support = jnp.where(group >= 0, group_support[:, safe_group], 0.0)  # [V, T]
    boosted = scores + prior_weight * jnp.maximum(support, 0.0)
    chosen = confident | (considered & (boosted >= accept))
    # Snap cancer codes to the subtype the confident codes point to: the subtype with the
    # largest summed evidence among confident cancer codes (or among candidates if none).
    is_cancer = subtype >= 0
    one_hot = jax.nn.one_hot(jnp.where(is_cancer, subtype, 0), num_subtypes) * is_cancer[:, None]
    confident_mass = jnp.where(confident, scores, 0.0) @ one_hot
    candidate_mass = jnp.where(considered, scores, 0.0) @ one_hot
    mass = jnp.where(jnp.any(confident_mass > 0, axis=-1, keepdims=True), confident_mass, candidate_mass)
    best = jnp.argmax(mass, axis=-1)
    keep_cancer = ~is_cancer[None, :] | (subtype[None, :] == best[:, None]) | confident
    chosen = chosen & keep_cancer
    if single_record:
        # One token per exclusive family (age, sex, each lab): keep its best token.
        family_best = jnp.zeros(scores.shape, bool)
        for f in range(exclusive.shape[0]):
            members = exclusive[f]
            masked = jnp.where(members[None, :], scores, -jnp.inf)
            top = jnp.argmax(masked, axis=-1)
            top_ok = jnp.take_along_axis(considered, top[:, None], axis=-1)[:, 0] | (f < 2)
            family_best = family_best | (jax.nn.one_hot(top, scores.shape[-1], dtype=bool) & top_ok[:, None])
        in_family = jnp.any(exclusive, axis=0)
        chosen = jnp.where(in_family[None, :], family_best, chosen)
    return chosen.at[:, 0].set(False)


def refine_with_ontology(recovery: CodeRecovery, *, accept_score: float, candidate_score: float,
                         prior_weight: float = 1.0, single_record: bool = True) -> CodeRecovery:
    """Ontology-constrained refinement of a scored recovery (e.g. ``noisy_code_set``).

    Tokens scoring at least ``accept_score`` are kept. A candidate scoring in
    ``[candidate_score, accept_score)`` is added when its score plus ``prior_weight``
    times its strongest positive log-lift (``fedpriv.public.icd10.cooccurrence_prior``)
    with a kept token reaches ``accept_score``. Cancer codes below ``accept_score`` are
    snapped to the hierarchy: only those of the subtype with most confident evidence stay.
    With ``single_record`` the age, sex and lab families keep exactly their best token
    (age and sex always, a lab only if its best token is a candidate), as every record has
    one of each.

    Args:
      recovery: a recovery over ``fedpriv.public.icd10.public_vocabulary()`` with scores.
      accept_score: score at which a token is kept without support.
      candidate_score: lowest score a token may have to be considered, <= ``accept_score``.
      prior_weight: weight of the log-lift bonus, >= 0.
      single_record: whether each victim's update comes from a single record.

    Returns:
      A ``CodeRecovery`` with the refined ``present`` (scores and counts unchanged).

    Raises:
      ValueError: if the scores do not cover the public vocabulary or the thresholds are
        out of order.
    """
    vocabulary = icd10.public_vocabulary()
    prior = icd10.cooccurrence_prior()
    if recovery.scores.shape[-1] != vocabulary.size:
        raise ValueError(f"recovery scores cover {recovery.scores.shape[-1]} tokens, the public "
                         f"vocabulary has {vocabulary.size}")
    if not candidate_score <= accept_score:
        raise ValueError(f"candidate_score must be <= accept_score, got {candidate_score!r} > {accept_score!r}")
    if not prior_weight >= 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}")
    families = ["age", "sex"] + [f"lab:{lab.name}" for lab in icd10.LABS]
    exclusive = np.zeros((len(families), vocabulary.size), bool)
    for f, family in enumerate(families):
        exclusive[f, vocabulary.family_ids(family)] = True
    present = _refine(jnp.asarray(recovery.scores), jnp.float32(accept_score), jnp.float32(candidate_score),
                      jnp.float32(prior_weight), jnp.asarray(prior.group_of_token), jnp.asarray(prior.log_lift),
                      jnp.asarray(vocabulary.subtype), jnp.asarray(exclusive), len(icd10.SUBTYPE_NAMES),
                      single_record=bool(single_record))
    return dataclasses.replace(recovery, present=np.asarray(present))
