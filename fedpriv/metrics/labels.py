"""Label recovery scores.

Label-recovery attacks on a batch (iDLG for one example, LLG and the bias-gradient
counting of Wainakh et al. for batches) recover which labels occur and how often, not
which example carries which. The default score is therefore order-free: the size of the
multiset intersection of predicted and true labels divided by the batch size.
Count-based attacks (LLG, iLRG) are also scored on the count vectors themselves: exact
counts per class, whole vectors exact, and the set of classes present.

References:
  Zhao, Mopuri, Bilen. "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610.
  Wainakh et al. "User-Level Label Leakage from Gradients in Federated Learning",
  PETS 2022, arXiv:2105.09369.
  Ma et al. "Instance-wise Batch Label Restoration via Gradients in Federated Learning",
  ICLR 2023, arXiv:2211.12044 (LeAcc, LnAcc).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _multiset_overlap(predicted: jax.Array, true: jax.Array) -> jax.Array:
    # The k-th occurrence of a label in ``true`` is recovered iff ``predicted`` holds that
    # label at least k times; summing these indicators gives the multiset intersection
    # size sum_c min(#pred_c, #true_c) in exact integer arithmetic.
    same_true = true[..., :, None] == true[..., None, :]
    earlier_or_self = jnp.tril(jnp.ones(same_true.shape[-2:], dtype=bool))
    occurrence = jnp.sum(same_true & earlier_or_self, axis=-1)
    count_in_predicted = jnp.sum(true[..., :, None] == predicted[..., None, :], axis=-1)
    return jnp.sum(occurrence <= count_in_predicted, axis=-1)


@jax.jit
def _positional_hits(predicted: jax.Array, true: jax.Array) -> jax.Array:
    return jnp.sum(predicted == true, axis=-1)


def label_accuracy(predicted, true, *, order_free: bool = True) -> float:
    """Fraction of true labels recovered.

    The last axis is the batch ``B``; any leading axes (e.g. victims and local steps of
    ``Reconstruction.labels``, ``[V, S, B]``) index separate batches and their scores
    are averaged.

    Args:
      predicted: integer labels, ``[..., B]``.
      true: integer labels of the same shape.
      order_free: ``True`` (default) scores ``|multiset(predicted) ∩ multiset(true)| / B``
        per batch, which is exact and ignores order; ``False`` scores
        ``mean(predicted == true)`` position by position.

    Returns:
      A Python float in ``[0, 1]``.

    Raises:
      ValueError: if the shapes differ, the batch is empty, or labels are not integers.

    Example:
      >>> label_accuracy([3, 1, 1, 2], [1, 2, 1, 1])  # overlap {1, 1, 2}
      0.75
      >>> label_accuracy([3, 1, 1, 2], [1, 2, 1, 1], order_free=False)
      0.25
    """
    predicted, true = jnp.asarray(predicted), jnp.asarray(true)
    if predicted.shape != true.shape or predicted.ndim == 0 or predicted.shape[-1] == 0:
        raise ValueError(f"label_accuracy: predicted and true must have the same non-empty shape "
                         f"[..., B], got {predicted.shape} and {true.shape}")
    for name, labels in (("predicted", predicted), ("true", true)):
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"label_accuracy: {name} must hold integer labels, got dtype {labels.dtype}")
    hits = _multiset_overlap(predicted, true) if order_free else _positional_hits(predicted, true)
    return float(jnp.mean(hits / true.shape[-1]))


def label_counts(labels, num_classes: int) -> np.ndarray:
    """Per-class counts ``[..., K]`` of integer labels ``[..., B]``.

    Example:
      >>> label_counts([2, 0, 2], 4).tolist()
      [1, 0, 2, 0]
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim == 0:
        raise ValueError(f"label_counts: labels must be integers of shape [..., B], got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label_counts: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    flat = labels.reshape(-1, labels.shape[-1])
    counts = np.stack([np.bincount(row, minlength=num_classes) for row in flat])
    return counts.reshape(*labels.shape[:-1], num_classes)


def _check_counts(predicted, true, *, fn: str):
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape or predicted.ndim == 0 or predicted.shape[-1] == 0:
        raise ValueError(f"{fn}: predicted and true counts must have the same non-empty shape [..., K], "
                         f"got {predicted.shape} and {true.shape}")
    for name, counts in (("predicted", predicted), ("true", true)):
        if not np.issubdtype(counts.dtype, np.integer) or (counts.size and counts.min() < 0):
            raise ValueError(f"{fn}: {name} counts must be non-negative integers, got dtype {counts.dtype}")
    return predicted, true


def label_count_accuracy(predicted, true) -> dict[str, float]:
    """How exactly per-class label counts were recovered (iLRG's LnAcc and more).

    Args:
      predicted: ``[..., K]`` recovered counts per class; leading axes are separate batches.
      true: ``[..., K]`` true counts (``label_counts`` of the true labels).

    Returns:
      ``{"class_exact": fraction of (batch, class) entries with the exact count,
      "vector_exact": fraction of batches whose whole count vector is exact,
      "instance": mean over batches of sum_k min(pred_k, true_k) / sum_k true_k}``
      (``"instance"`` equals the order-free ``label_accuracy`` of the label multisets).

    Raises:
      ValueError: for different shapes or counts that are not non-negative integers.

    Example:
      >>> label_count_accuracy([[2, 1, 0], [0, 3, 0]], [[2, 1, 0], [1, 1, 1]])
      {'class_exact': 0.5, 'vector_exact': 0.5, 'instance': 0.6666666666666666}
    """
    predicted, true = _check_counts(predicted, true, fn="label_count_accuracy")
    flat_predicted = predicted.reshape(-1, predicted.shape[-1])
    flat_true = true.reshape(-1, true.shape[-1])
    overlap = np.minimum(flat_predicted, flat_true).sum(axis=-1) / np.maximum(flat_true.sum(axis=-1), 1)
    return {"class_exact": float(np.mean(flat_predicted == flat_true)),
            "vector_exact": float(np.mean(np.all(flat_predicted == flat_true, axis=-1))),
            "instance": float(np.mean(overlap))}


def label_set_accuracy(predicted, true) -> float:
    """Agreement of the sets of classes present (iLRG's LeAcc as a Jaccard index).

    Per batch ``|P ∩ T| / |P ∪ T|`` with ``P``, ``T`` the classes of non-zero predicted and
    true count, averaged over batches; 1 when exactly the right classes are found.

    Args:
      predicted: ``[..., K]`` recovered counts (or 0/1 presence) per class.
      true: ``[..., K]`` true counts.

    Returns:
      A Python float in ``[0, 1]``.

    Raises:
      ValueError: for different shapes or counts that are not non-negative integers.

    Example:
      >>> label_set_accuracy([3, 1, 0, 0], [2, 0, 2, 0])  # {0, 1} vs {0, 2}
      0.3333333333333333
    """
    predicted, true = _check_counts(predicted, true, fn="label_set_accuracy")
    present_predicted = predicted.reshape(-1, predicted.shape[-1]) > 0
    present_true = true.reshape(-1, true.shape[-1]) > 0
    union = np.sum(present_predicted | present_true, axis=-1)
    intersection = np.sum(present_predicted & present_true, axis=-1)
    return float(np.mean(np.where(union > 0, intersection / np.maximum(union, 1), 1.0)))
