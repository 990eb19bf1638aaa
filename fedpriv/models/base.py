"""Wraps Flax linen modules as pure ``Model`` triples (DESIGN §2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedpriv.typing import Batch, Model


def from_linen(
    module: nn.Module,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    head_names: tuple[str, ...],
    name: str,
) -> Model:
    """Turns a linen module into a ``Model`` whose params are the ``"params"`` collection.

    The module must have no mutable state (no BatchNorm): models are vmapped per client
    and trained with per-example DP, where batch statistics would leak across examples.

    Args:
      module: a linen module mapping ``[B, *input_shape]`` to logits ``[B, num_classes]``.
      input_shape: shape of one example.
      num_classes: number of classes.
      head_names: top-level submodule names that form the head (the split point).
      name: name used in reports.
    """

    def init(key, x):
        variables = module.init(key, x)
        extra = set(variables) - {"params"}
        if extra:
            raise ValueError(f"model {name!r} has mutable collections {sorted(extra)}; "
                             "only stateless modules (no BatchNorm) are allowed")
        return variables["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    def per_example_loss(params, batch: Batch):
        logits = apply(params, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])

    return Model(init=init, apply=apply, per_example_loss=per_example_loss,
                 input_shape=tuple(input_shape), num_classes=int(num_classes),
                 head_names=tuple(head_names), name=name)


def check_input_shape(model: Model, input_shape: tuple[int, ...]) -> None:
    """Raises ``ValueError`` if the model cannot take examples of ``input_shape``."""
    try:
        jax.eval_shape(lambda k: model.apply(model.init(k, jnp.zeros((1, *input_shape))),
                                             jnp.zeros((1, *input_shape))),
                       jax.random.key(0))
    except Exception as error:  # noqa: BLE001 - reported with the shape that failed
        raise ValueError(f"model {model.name!r} cannot take inputs of shape {input_shape}: {error}") from error
