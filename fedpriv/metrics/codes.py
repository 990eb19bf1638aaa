"""Scores of recovered code sets against the true records (ground truth lives only here).

* ``code_set_scores``: precision, recall and F1 of recovered token sets;
* ``count_accuracy``: how many true tokens got exactly their count;
* ``hierarchical_match``: how close recovered codes are in the ICD-10-CM hierarchy (exact
  code, same category, same block, same chapter);
* ``subtype_accuracy``: whether the cancer subtype implied by the recovered codes is the
  record's label.

Sets are ``[V, vocabulary_size]`` boolean masks (``CodeRecovery.present``); true sets come
from token-id rows with ``token_mask``/``token_counts``.

References:
  Gupta et al. "Recovering Private Text in Federated Learning of Language Models",
  NeurIPS 2022, arXiv:2205.08514 (set precision/recall/F1 of recovered tokens).
"""

from __future__ import annotations

import numpy as np

from fedpriv.public import icd10

LEVELS = ("code", "category", "block", "chapter")
# Credit of a match at each level in ``hierarchical_match``'s ``score``.
LEVEL_CREDIT = {"code": 1.0, "category": 0.75, "block": 0.5, "chapter": 0.25}


def token_counts(codes, vocabulary_size: int) -> np.ndarray:
    """``[V, vocabulary_size]`` int32 counts of the ids in ``codes [V, ...]`` (0 and negatives ignored).

    Use ``[V, records * max_codes]`` rows to pool the records of one victim.
    """
    codes = np.asarray(codes)
    if codes.ndim < 1 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be an integer array [V, ...], got shape {codes.shape} dtype {codes.dtype}")
    if codes.size and codes.max() >= vocabulary_size:
        raise ValueError(f"codes hold id {codes.max()}, outside a vocabulary of {vocabulary_size} tokens")
    flat = codes.reshape(codes.shape[0], -1)
    counts = np.zeros((flat.shape[0], vocabulary_size), dtype=np.int32)
    rows = np.repeat(np.arange(flat.shape[0]), flat.shape[1])
    valid = flat.ravel() > 0
    np.add.at(counts, (rows[valid], flat.ravel()[valid]), 1)
    return counts


def token_mask(codes, vocabulary_size: int) -> np.ndarray:
    """``[V, vocabulary_size]`` bool: which ids occur in each row of ``codes`` (padding 0 ignored)."""
    return token_counts(codes, vocabulary_size) > 0


def _check_pair(predicted, true, name: str) -> tuple[np.ndarray, np.ndarray]:
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(f"{name}: predicted and true must both be [V, vocabulary_size], got "
                         f"{predicted.shape} and {true.shape}")
    return predicted, true


def code_set_scores(predicted, true) -> dict[str, float]:
    """Precision, recall and F1 of recovered token sets, averaged over victims.

    Per victim, ``precision = |P & T| / |P|`` and ``recall = |P & T| / |T|``, with ``0/0 = 1``
    (an empty prediction of an empty truth is perfect); ``F1`` is their harmonic mean, 0 if
    both are 0. Padding (id 0) is ignored.

    Args:
      predicted: ``[V, vocabulary_size]`` bool recovered sets.
      true: ``[V, vocabulary_size]`` bool true sets.

    Returns:
      ``{"precision", "recall", "f1"}`` as Python floats.

    Example:
      >>> p = np.array([[0, 1, 1, 0, 0]], bool); t = np.array([[0, 1, 0, 1, 1]], bool)
      >>> {k: round(v, 4) for k, v in code_set_scores(p, t).items()}
      {'precision': 0.5, 'recall': 0.3333, 'f1': 0.4}
    """
    predicted, true = _check_pair(predicted, true, "code_set_scores")
    predicted, true = predicted[:, 1:].astype(bool), true[:, 1:].astype(bool)
    hits = np.sum(predicted & true, axis=1)
    num_predicted, num_true = predicted.sum(axis=1), true.sum(axis=1)
    precision = np.where(num_predicted > 0, hits / np.maximum(num_predicted, 1), 1.0)
    recall = np.where(num_true > 0, hits / np.maximum(num_true, 1), 1.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}


def count_accuracy(predicted_counts, true_counts) -> dict[str, float]:
    """How well per-token counts were recovered.

    Args:
      predicted_counts: ``[V, vocabulary_size]`` int counts.
      true_counts: ``[V, vocabulary_size]`` int counts.

    Returns:
      ``{"token_accuracy"}``: fraction of true tokens (count > 0, padding excluded) whose
      count is exact, pooled over victims; ``{"exact_records"}``: fraction of victims
      whose whole count vector is exact.
    """
    predicted, true = _check_pair(predicted_counts, true_counts, "count_accuracy")
    predicted, true = predicted[:, 1:], true[:, 1:]
    relevant = true > 0
    token = float(np.sum((predicted == true) & relevant) / max(int(relevant.sum()), 1))
    records = float(np.mean(np.all(predicted == true, axis=1)))
    return {"token_accuracy": token, "exact_records": records}


def hierarchical_match(predicted, true, vocabulary: icd10.Vocabulary | None = None) -> dict[str, float]:
    """Fraction of recovered codes matching a true code at each level of the hierarchy.

    A recovered code matches at level ``category`` if some true code has the same
    category, and so on; levels are nested, so the fractions grow from ``code`` to
    ``chapter``. Non-code tokens (age, sex, labs) match only exactly. ``score`` credits
    each recovered token with ``LEVEL_CREDIT`` of its closest level (0 if none).

    Args:
      predicted: ``[V, vocabulary_size]`` bool recovered sets.
      true: ``[V, vocabulary_size]`` bool true sets.
      vocabulary: the vocabulary the ids refer to (default: the public one).

    Returns:
      ``{"code", "category", "block", "chapter", "score"}`` pooled over all recovered tokens
      (all 0 when nothing was recovered).
    """
    predicted, true = _check_pair(predicted, true, "hierarchical_match")
    vocabulary = icd10.public_vocabulary() if vocabulary is None else vocabulary
    if predicted.shape[1] != vocabulary.size:
        raise ValueError(f"hierarchical_match: sets cover {predicted.shape[1]} tokens, the vocabulary "
                         f"has {vocabulary.size}")
    predicted, true = predicted.astype(bool).copy(), true.astype(bool)
    predicted[:, 0] = False
    victim, token = np.nonzero(predicted)
    if token.size == 0:
        return {**{level: 0.0 for level in LEVELS}, "score": 0.0}
    matched = {"code": true[victim, token]}
    levels = vocabulary.levels  # columns: chapter, block, category, code
    for name, column in (("category", 2), ("block", 1), ("chapter", 0)):
        size = len(vocabulary.level_names[column])
        true_at_level = np.zeros((true.shape[0], size + 1), bool)  # last column: non-codes
        v, t = np.nonzero(true)
        true_at_level[v, np.where(levels[t, column] >= 0, levels[t, column], size)] = True
        true_at_level[:, size] = False
        ids = np.where(levels[token, column] >= 0, levels[token, column], size)
        matched[name] = true_at_level[victim, ids] | matched["code"]
    matched["block"] |= matched["category"]
    matched["chapter"] |= matched["block"]
    credit = np.zeros(token.size)
    for name in reversed(LEVELS):  # the closest level wins
        credit = np.where(matched[name], LEVEL_CREDIT[name], credit)
    return {**{name: float(matched[name].mean()) for name in LEVELS}, "score": float(credit.mean())}


def implied_subtypes(recovered, vocabulary: icd10.Vocabulary | None = None) -> np.ndarray:
    """The cancer subtype implied by recovered codes: most recovered cancer-code occurrences.

    Args:
      recovered: ``[V, vocabulary_size]`` bool sets or int counts (counts weigh codes).
      vocabulary: the vocabulary the ids refer to (default: the public one).

    Returns:
      ``[V]`` int32 index into ``icd10.SUBTYPE_NAMES``, ``-1`` when no cancer code was
      recovered; ties go to the lower index.
    """
    vocabulary = icd10.public_vocabulary() if vocabulary is None else vocabulary
    recovered = np.asarray(recovered)
    if recovered.ndim != 2 or recovered.shape[1] != vocabulary.size:
        raise ValueError(f"recovered must be [V, {vocabulary.size}], got {recovered.shape}")
    weight = recovered.astype(np.float64)
    one_hot = np.zeros((vocabulary.size, len(icd10.SUBTYPE_NAMES)))
    cancer = np.flatnonzero(vocabulary.subtype >= 0)
    one_hot[cancer, vocabulary.subtype[cancer]] = 1.0
    mass = weight @ one_hot
    return np.where(mass.max(axis=1) > 0, mass.argmax(axis=1), -1).astype(np.int32)


def subtype_accuracy(recovered, labels, vocabulary: icd10.Vocabulary | None = None) -> float:
    """Fraction of victims whose implied subtype (``implied_subtypes``) equals the true label.

    Args:
      recovered: ``[V, vocabulary_size]`` bool sets or int counts, one record per victim.
      labels: ``[V]`` true subtype indices.
      vocabulary: the vocabulary the ids refer to (default: the public one).

    Returns:
      A Python float in ``[0, 1]``; a victim with no recovered cancer code counts as wrong.
    """
    implied = implied_subtypes(recovered, vocabulary)
    labels = np.asarray(labels)
    if labels.shape != implied.shape:
        raise ValueError(f"labels must have shape {implied.shape}, got {labels.shape}")
    return float(np.mean(implied == labels))
