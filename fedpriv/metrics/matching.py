"""Pairs reconstructions with true records for scoring.

A batch attack returns its reconstructions in an arbitrary order (the gradient of a
sum does not depend on the order of the examples), so batch scores first solve the
assignment problem on pairwise MSE and compare each reconstruction with the record it
was assigned.

References:
  Kuhn. "The Hungarian Method for the Assignment Problem", Naval Research Logistics
  Quarterly 2(1-2), 1955 (no arXiv version).
  Geiping et al. "Inverting Gradients -- How easy is it to break privacy in federated
  learning?", NeurIPS 2020, arXiv:2003.14053 (batch reconstructions scored after matching).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize


@jax.jit
def _pairwise_mse(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a.reshape(a.shape[0], -1).astype(jnp.float32)
    b = b.reshape(b.shape[0], -1).astype(jnp.float32)
    # One row at a time: exact differences (no ||a||^2 + ||b||^2 - 2ab cancellation)
    # with memory of one [M, D] block rather than [N, M, D].
    return jax.lax.map(lambda row: jnp.mean(jnp.square(b - row), axis=1), a)


def pairwise_mse(a, b) -> jax.Array:
    """Mean squared error between every example of ``a`` and every example of ``b``.

    Args:
      a: ``[N, ...]`` array.
      b: ``[M, ...]`` array whose examples have the same shape as ``a``'s.

    Returns:
      ``[N, M]`` float32 with entry ``(i, j) = mean((a[i] - b[j]) ** 2)``.

    Raises:
      ValueError: if the example shapes differ or either side is empty.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 1 or b.ndim < 1 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"pairwise_mse: examples must have the same shape, got arrays of shape "
                         f"{a.shape} and {b.shape}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"pairwise_mse: both sides need at least one example, got shapes {a.shape} and {b.shape}")
    return _pairwise_mse(a, b)


def best_match(reconstructed, truth) -> np.ndarray:
    """The assignment of reconstructions to true records with the least total MSE.

    Args:
      reconstructed: ``[N, ...]`` reconstructions.
      truth: ``[M, ...]`` true records with ``M >= N`` (usually ``M == N``).

    Returns:
      ``[N]`` int64 ``permutation`` with ``reconstructed[i]`` matched to
      ``truth[permutation[i]]``; distinct entries. So ``truth[permutation]`` is the truth
      in the reconstructions' order.

    Raises:
      ValueError: if the example shapes differ, a side is empty, or ``N > M``.

    Example:
      >>> import numpy as np
      >>> truth = np.arange(3.0).reshape(3, 1)
      >>> best_match(truth[[2, 0, 1]], truth).tolist()
      [2, 0, 1]
    """
    costs = np.asarray(pairwise_mse(reconstructed, truth), dtype=np.float64)
    if costs.shape[0] > costs.shape[1]:
        raise ValueError(f"best_match: more reconstructions ({costs.shape[0]}) than true records "
                         f"({costs.shape[1]})")
    rows, columns = scipy.optimize.linear_sum_assignment(costs)
    permutation = np.empty(costs.shape[0], dtype=np.int64)
    permutation[rows] = columns
    return permutation


@dataclasses.dataclass(frozen=True)
class RecordAssignment:
    """Which reconstruction is scored against which true record, with nothing left out.

    Attributes:
      reconstruction_index: ``[P]`` reconstructions of the scored pairs.
      truth_index: ``[P]`` their true records (a record appears twice only in ``"nearest"``).
      missing: true records no reconstruction was assigned to: they score as failures.
      matching: ``"assignment"`` (Hungarian: at most as many reconstructions as records,
        each record used once) or ``"nearest"`` (more reconstructions than records: all
        of them are scored, each against its nearest record; none is dropped).
    """

    reconstruction_index: np.ndarray
    truth_index: np.ndarray
    missing: np.ndarray
    matching: str


def assign_records(costs) -> RecordAssignment:
    """Pairs reconstructions with true records from ``[N, M]`` costs, without picking any.

    With ``N <= M`` the Hungarian assignment pairs every reconstruction with a distinct
    record and the ``M - N`` records left over are ``missing``. With ``N > M`` the
    surplus is *not* filtered with the ground truth (that would score the attacker's
    lucky guesses only): every reconstruction is scored against its nearest record, and
    records nearest to none are ``missing``.
    """
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 2:
        raise ValueError(f"assign_records: costs must be [reconstructions, records], got shape {costs.shape}")
    count, records = costs.shape
    if count == 0 or records == 0:
        return RecordAssignment(np.zeros(0, np.int64), np.zeros(0, np.int64), np.arange(records), "assignment")
    if count <= records:
        rows, columns = scipy.optimize.linear_sum_assignment(costs)
        matching = "assignment"
    else:
        rows, columns = np.arange(count), np.argmin(costs, axis=1)
        matching = "nearest"
    missing = np.setdiff1d(np.arange(records), columns)
    return RecordAssignment(rows.astype(np.int64), columns.astype(np.int64), missing.astype(np.int64), matching)
