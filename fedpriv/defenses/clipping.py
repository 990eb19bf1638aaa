"""Per-example gradients and per-example L2 clipping (the bounded-sensitivity half of DP-SGD).

Conventions: a *per-example pytree* has the structure of the params and a leading batch
axis ``B`` on every leaf; example ``b``'s contribution is the slice ``[b]`` of every leaf,
and its norm is the global L2 norm over all leaves together (Abadi et al. 2016 clip the
whole gradient, not layer by layer).

All functions are pure and jit/vmap-friendly (vmap over a client axis adds one more
leading axis outside ``B``).
"""

from __future__ import annotations

from collections.abc import Callable
import numbers

import jax
import jax.numpy as jnp

from fedpriv.privacy import _validation
from fedpriv.typing import Array, Batch, Params


def _check_clip(l2_clip_norm) -> None:
    # A traced clip norm (e.g. adaptive clipping) cannot be checked here; its plan checks it.
    if isinstance(l2_clip_norm, numbers.Real):
        _validation.check_positive(l2_clip_norm, "l2_clip_norm")


def _batch_size(per_example_grads: Params) -> int:
    leaves = jax.tree_util.tree_leaves(per_example_grads)
    if not leaves:
        raise ValueError("per_example_grads must have at least one leaf, got an empty pytree")
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every leaf of per_example_grads must have the same leading batch axis, "
                         f"got leading sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def per_example_global_norms(per_example_grads: Params) -> Array:
    """Global L2 norm of each example's contribution, over all leaves.

    Differentiable everywhere, including at a zero gradient (the square root is taken
    of a value kept away from zero, then the zero is put back), so attacks can
    differentiate through clipping.

    Args:
      per_example_grads: pytree whose leaves are ``[B, *param_shape]``.

    Returns:
      ``[B]`` norms, in float32 or wider.
    """
    _batch_size(per_example_grads)
    squared = sum(
        jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1).astype(jnp.promote_types(leaf.dtype, jnp.float32))),
                axis=1)
        for leaf in jax.tree_util.tree_leaves(per_example_grads))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _scales(norms: Array, l2_clip_norm) -> Array:
    # min(1, C / norm) written as C / max(norm, C): equal for norm > 0 and exactly 1 at
    # norm 0, with no division by zero.
    return l2_clip_norm / jnp.maximum(norms, l2_clip_norm)


def _scale_leaves(per_example_grads: Params, factors: Array) -> Params:
    def scale(leaf):
        return leaf * factors.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)

    return jax.tree_util.tree_map(scale, per_example_grads)


def clip_per_example(per_example_grads: Params, l2_clip_norm: float | Array) -> Params:
    """Scales each example's contribution to global L2 norm at most ``l2_clip_norm``.

    Example ``b`` is multiplied by ``min(1, l2_clip_norm / ||g_b||)`` (by 1 when
    ``g_b = 0``).

    Args:
      per_example_grads: pytree whose leaves are ``[B, *param_shape]``.
      l2_clip_norm: the clip norm ``C > 0`` (a Python number, or an array under tracing).

    Returns:
      A pytree like ``per_example_grads`` with every example's global norm ``<= C``.

    Raises:
      ValueError: if ``l2_clip_norm`` is a number ``<= 0``, or leaves disagree on ``B``.

    **Formal guarantees**

    - Bound: each example's clipped contribution has L2 norm ``<= l2_clip_norm`` (up to
      floating-point rounding, about one unit in the last place), so adding or removing
      one example changes the sum of clipped contributions by at most ``l2_clip_norm``.
    - Relation: add/remove-one example.
    - Unit: one example, i.e. one slice along the leading axis.
    - Not protected: clipping alone gives no differential privacy (there is no noise);
      a person with several examples contributes several times the bound.

    References:
      Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv 1607.00133.
    """
    _check_clip(l2_clip_norm)
    norms = per_example_global_norms(per_example_grads)
    return _scale_leaves(per_example_grads, _scales(norms, l2_clip_norm))


def clipped_sum(per_example_grads: Params, example_mask: Array,
                l2_clip_norm: float | Array) -> tuple[Params, Array]:
    """Sum of the clipped contributions of the real (unmasked) examples.

    Args:
      per_example_grads: pytree whose leaves are ``[B, *param_shape]``.
      example_mask: ``[B]``, non-zero for a real example and 0 for padding. A real
        example counts once whatever its mask value (weights would change the
        sensitivity); padding contributes exactly 0, even if its gradient is NaN or inf.
      l2_clip_norm: the clip norm ``C > 0``.

    Returns:
      ``(sum_pytree, fraction_clipped)``: the pytree of summed clipped contributions
      (leaves ``[*param_shape]``) and the fraction of real examples whose norm exceeded
      ``C`` (0 when there are none).

    Raises:
      ValueError: if ``l2_clip_norm`` is a number ``<= 0`` or ``example_mask`` is not
        ``[B]``.

    **Formal guarantees**

    - Bound: the returned sum has L2 sensitivity ``l2_clip_norm``: adding or removing one
      real example moves it by at most ``C`` in L2 norm.
    - Relation: add/remove-one example.
    - Unit: one example.
    - Not protected: the sum itself is not private until noise is added
      (:class:`fedpriv.defenses.DPSGDPlan` does both). ``fraction_clipped`` is a
      data-dependent diagnostic with no privacy guarantee: keep it on the client, never
      release it.
    """
    _check_clip(l2_clip_norm)
    batch_size = _batch_size(per_example_grads)
    example_mask = jnp.asarray(example_mask)
    if example_mask.shape != (batch_size,):
        raise ValueError(f"example_mask must have shape ({batch_size},) to match per_example_grads, "
                         f"got {example_mask.shape}")
    real = example_mask != 0
    norms = per_example_global_norms(per_example_grads)
    clipped = _scale_leaves(per_example_grads, _scales(norms, l2_clip_norm))

    def masked_sum(leaf):
        keep = real.reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.sum(jnp.where(keep, leaf, jnp.zeros((), leaf.dtype)), axis=0)

    total = jax.tree_util.tree_map(masked_sum, clipped)
    num_real = jnp.sum(real)
    num_clipped = jnp.sum(real & (norms > l2_clip_norm))
    fraction_clipped = num_clipped / jnp.maximum(num_real, 1)
    return total, fraction_clipped.astype(jnp.float32)


def per_example_gradients(loss_fn: Callable[[Params, Batch], Array], params: Params, batch: Batch) -> Params:
    """Gradient of the loss of every example separately, via ``vmap(grad(...))``.

    ``loss_fn(params, batch_of_one)`` receives a batch holding ONE example, with the
    leading batch axis kept (every leaf ``[1, ...]``), and returns a scalar or an array
    of one element (it is summed). So a model's ``per_example_loss`` (``-> [B]``) can be
    passed as it is: ``per_example_gradients(model.per_example_loss, params, batch)``.
    Keeping the batch axis means the model code is the same as in ordinary training.

    Args:
      loss_fn: ``loss_fn(params, batch_of_one) -> scalar or [1]``.
      params: the params pytree.
      batch: a mapping like ``{"x": [B, ...], "y": [B]}``; every leaf has leading axis B.

    Returns:
      A pytree like ``params`` with a leading axis ``B`` on every leaf. Padding examples
      get gradients too; :func:`clipped_sum` drops them.

    Raises:
      ValueError: if ``loss_fn`` returns more than one value for one example.

    Example:
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> batch = {"x": jnp.array([[1.0, 0.0], [0.0, 3.0]]), "y": jnp.zeros(2)}
      >>> loss = lambda p, b: (b["x"] @ p["w"]) ** 2
      >>> per_example_gradients(loss, params, batch)["w"]
      Array([[ 2.,  0.],
             [ 0., 36.]], dtype=float32)
    """

    def loss_of_one(params, example):
        batch_of_one = jax.tree_util.tree_map(lambda leaf: jnp.expand_dims(leaf, 0), example)
        loss = jnp.asarray(loss_fn(params, batch_of_one))
        if loss.size != 1:
            raise ValueError(f"loss_fn must return a scalar or one value for a batch of one example, "
                             f"got shape {loss.shape}")
        return jnp.sum(loss)

    return jax.vmap(jax.grad(loss_of_one), in_axes=(None, 0))(params, batch)
