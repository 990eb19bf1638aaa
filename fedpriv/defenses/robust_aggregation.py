"""Byzantine-robust aggregation of client updates: Krum, coordinate-wise median, trimmed mean.

Every rule takes per-client updates (a pytree whose leaves are ``[C, *param_shape]``) and
a ``client_mask [C]``; clients with mask 0 (padding, absent, or rejected by a screen)
are ignored exactly, so the number of real clients may change from round to round
without recompiling. All functions are pure and jittable.

The server-side rules replace the weighted mean of ``fedpriv.federated.aggregate``; they
weight every present client equally (a robust rule cannot trust a client's claimed
example count).

References:
  Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017, arXiv:1703.02757 (Krum, multi-Krum).
  Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
  Statistical Rates", ICML 2018, arXiv:1803.01498 (coordinate-wise median, trimmed mean).
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp

from fedpriv.typing import Array, Params

ROBUST_RULES = ("krum", "median", "trimmed_mean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobustAggregationConfig:
    """Which robust rule the server uses and its assumptions.

    Attributes:
      rule: one of ``ROBUST_RULES``.
      num_byzantine: ``f``, the number of malicious clients Krum tolerates; Krum needs
        ``n > 2 f + 2`` present clients.
      num_selected: ``m``, how many lowest-score updates multi-Krum averages (1 is Krum).
      trim_fraction: ``beta`` in ``[0, 0.5)``: the trimmed mean drops the
        ``floor(beta * n)`` largest and smallest values of each coordinate.
    """

    rule: str
    num_byzantine: int = 0
    num_selected: int = 1
    trim_fraction: float = 0.1

    def __post_init__(self):
        if self.rule not in ROBUST_RULES:
            raise ValueError(f"rule must be one of {list(ROBUST_RULES)}, got {self.rule!r}")
        if isinstance(self.num_byzantine, bool) or not isinstance(self.num_byzantine, numbers.Integral) \
                or self.num_byzantine < 0:
            raise ValueError(f"num_byzantine must be an integer >= 0, got {self.num_byzantine!r}")
        if isinstance(self.num_selected, bool) or not isinstance(self.num_selected, numbers.Integral) \
                or self.num_selected < 1:
            raise ValueError(f"num_selected must be an integer >= 1, got {self.num_selected!r}")
        if isinstance(self.trim_fraction, bool) or not isinstance(self.trim_fraction, numbers.Real) \
                or not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")


def _present(client_mask: Array) -> Array:
    return jnp.asarray(client_mask) > 0


def _sorted_present(leaf: Array, present: Array) -> Array:
    # Absent clients go to the end of every coordinate's sorted column as +inf, so the
    # first n entries are exactly the present clients' values in order.
    shape = (-1,) + (1,) * (leaf.ndim - 1)
    return jnp.sort(jnp.where(present.reshape(shape), leaf, jnp.inf), axis=0)


def coordinate_median(updates: Params, client_mask: Array) -> Params:
    """Coordinate-wise median over the present clients (mean of the two middle values
    when their number is even).

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      client_mask: ``[C]``, non-zero for a present client.

    Returns:
      A pytree with leaves ``[*param_shape]``; all zeros when no client is present.

    References:
      Yin et al. 2018, arXiv:1803.01498, Option II ("median-based").
    """
    present = _present(client_mask)
    count = jnp.sum(present)
    low, high = jnp.maximum((count - 1) // 2, 0), jnp.maximum(count // 2, 0)

    def median(leaf):
        ordered = _sorted_present(leaf, present)
        value = 0.5 * (jnp.take(ordered, low, axis=0) + jnp.take(ordered, high, axis=0))
        return jnp.where(count > 0, value, jnp.zeros_like(value)).astype(leaf.dtype)

    return jax.tree_util.tree_map(median, updates)


def trimmed_mean(updates: Params, client_mask: Array, trim_fraction: float) -> Params:
    """Coordinate-wise ``beta``-trimmed mean over the present clients.

    For ``n`` present clients, each coordinate drops its ``floor(beta * n)`` largest and
    smallest values and averages the rest (the convention of ``scipy.stats.trim_mean``).

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      client_mask: ``[C]``, non-zero for a present client.
      trim_fraction: ``beta`` in ``[0, 0.5)``.

    Returns:
      A pytree with leaves ``[*param_shape]``; all zeros when no client is present.

    Raises:
      ValueError: if ``trim_fraction`` is outside ``[0, 0.5)``.

    References:
      Yin et al. 2018, arXiv:1803.01498, Option I ("trimmed-mean-based").
    """
    if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, numbers.Real) \
            or not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    present = _present(client_mask)
    count = jnp.sum(present)
    trimmed = jnp.floor(trim_fraction * count).astype(jnp.int32)

    def mean(leaf):
        ordered = _sorted_present(leaf, present)
        rank = jnp.arange(leaf.shape[0]).reshape((-1,) + (1,) * (leaf.ndim - 1))
        keep = (rank >= trimmed) & (rank < count - trimmed)
        total = jnp.sum(jnp.where(keep, ordered, 0.0), axis=0)
        return (total / jnp.maximum(count - 2 * trimmed, 1)).astype(leaf.dtype)

    return jax.tree_util.tree_map(mean, updates)


def flatten_clients(updates: Params) -> Array:
    """Per-client updates as one ``[C, D]`` float32 matrix (leaves in tree order)."""
    leaves = jax.tree_util.tree_leaves(updates)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1).astype(jnp.float32) for leaf in leaves], axis=1)


def krum_scores(updates: Params, client_mask: Array, num_byzantine: int) -> Array:
    """Krum score of every client: the sum of squared distances to its ``n - f - 2``
    nearest present neighbours (``+inf`` for absent clients).

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      client_mask: ``[C]``, non-zero for a present client.
      num_byzantine: ``f``.

    Returns:
      ``[C]`` float32 scores; the lower, the more central.

    References:
      Blanchard et al. 2017, arXiv:1703.02757, Sec. 4.
    """
    flat = flatten_clients(updates)
    present = _present(client_mask)
    count = jnp.sum(present)
    # Distances from explicit differences, not |a|^2 + |b|^2 - 2ab, which cancels badly for
    # nearby updates, exactly the ones Krum must tell apart.
    distances = jax.vmap(lambda row: jnp.sum(jnp.square(flat - row), axis=1))(flat)
    others = present[None, :] & present[:, None] & ~jnp.eye(flat.shape[0], dtype=bool)
    ordered = jnp.sort(jnp.where(others, distances, jnp.inf), axis=1)
    neighbours = jnp.maximum(count - num_byzantine - 2, 1)
    rank = jnp.arange(flat.shape[0])[None, :]
    scores = jnp.sum(jnp.where(rank < neighbours, ordered, 0.0), axis=1)
    return jnp.where(present, scores, jnp.inf)


def multi_krum(updates: Params, client_mask: Array, num_byzantine: int,
               num_selected: int = 1) -> tuple[Params, Array]:
    """Multi-Krum: the mean of the ``m`` present updates with the lowest Krum scores.

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      client_mask: ``[C]``, non-zero for a present client.
      num_byzantine: ``f``; the guarantee needs ``n > 2 f + 2`` present clients.
      num_selected: ``m``; 1 is Krum. Fewer are taken when fewer clients are present.

    Returns:
      ``(aggregate, selected)``: the mean of the selected updates (leaves
      ``[*param_shape]``) and the ``[C]`` boolean selection.

    References:
      Blanchard et al. 2017, arXiv:1703.02757, Sec. 4 and 5 (multi-Krum).
    """
    scores = krum_scores(updates, client_mask, num_byzantine)
    present = _present(client_mask)
    # Rank by (score, index): ties are broken by client position, deterministically.
    order = jnp.argsort(scores, stable=True)
    rank = jnp.empty_like(order).at[order].set(jnp.arange(order.shape[0]))
    selected = present & (rank < num_selected)
    weights = selected.astype(jnp.float32) / jnp.maximum(jnp.sum(selected), 1)
    aggregate = jax.tree_util.tree_map(lambda leaf: jnp.tensordot(weights, leaf.astype(jnp.float32), axes=1)
                                       .astype(leaf.dtype), updates)
    return aggregate, selected


def robust_aggregate(updates: Params, client_mask: Array, config: RobustAggregationConfig) -> Params:
    """Aggregates with the rule of ``config`` (see the functions above)."""
    if config.rule == "median":
        return coordinate_median(updates, client_mask)
    if config.rule == "trimmed_mean":
        return trimmed_mean(updates, client_mask, config.trim_fraction)
    return multi_krum(updates, client_mask, config.num_byzantine, config.num_selected)[0]
