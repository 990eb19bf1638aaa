"""Pairs each reconstruction with its best-matching true record.

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
