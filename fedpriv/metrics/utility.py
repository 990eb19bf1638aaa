"""Utility of a trained model: test accuracy."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.typing import Array, Model, Params


@functools.partial(jax.jit, static_argnames=("apply",))
def _count_correct(apply: Callable[[Params, Array], Array], params: Params, x: Array, y: Array,
                   mask: Array) -> Array:
    predictions = jnp.argmax(apply(params, x), axis=-1)
    return jnp.sum((predictions == y) & mask)


def accuracy(model: Model, params: Params, images, labels, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a labelled set.

    Examples go through one jitted evaluation of a fixed ``[batch_size, ...]`` shape;
    the last partial batch is zero-padded and masked out, so a set of any size costs one
    compilation per model and batch size (the model's ``apply`` is the cache key, so
    repeated calls with the same ``Model`` reuse it). Ties in the logits go to the
    lowest class index, as ``argmax``.

    Args:
      model: the model.
      params: its params.
      images: ``[N, *model.input_shape]`` inputs (host or device arrays).
      labels: ``[N]`` integer labels.
      batch_size: examples per jitted evaluation.

    Returns:
      A Python float in ``[0, 1]``.

    Raises:
      ValueError: if the set is empty, shapes disagree, or ``batch_size < 1``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"accuracy: batch_size must be a positive integer, got {batch_size!r}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim < 1 or images.shape[0] == 0:
        raise ValueError(f"accuracy: need at least one example, got images of shape {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"accuracy: labels must have shape [N] = {images.shape[:1]}, got {labels.shape}")
    if images.shape[1:] != tuple(model.input_shape):
        raise ValueError(f"accuracy: model {model.name!r} takes examples of shape {tuple(model.input_shape)}, "
                         f"got images of shape {images.shape}")
    total = images.shape[0]
    counts = []
    for start in range(0, total, batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        real = x.shape[0]
        mask = np.ones(batch_size, dtype=bool)
        if real < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - real, *x.shape[1:]), dtype=x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - real, dtype=y.dtype)])
            mask[real:] = False
        counts.append(_count_correct(model.apply, params, x, y, mask))
    return float(sum(int(c) for c in counts)) / total
