"""Label recovery scores.

Label-recovery attacks on a batch (iDLG for one example, LLG and the bias-gradient
counting of Wainakh et al. for batches) recover which labels occur and how often, not
which example carries which. The default score is therefore order-free: the size of the
multiset intersection of predicted and true labels divided by the batch size.

References:
  Zhao, Mopuri, Bilen. "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610.
  Wainakh et al. "User-Level Label Leakage from Gradients in Federated Learning",
  PETS 2022, arXiv:2105.09369.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
