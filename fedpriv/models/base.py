"""Wraps Flax linen modules as pure ``Model`` triples (DESIGN §2)."""

from __future__ import annotations

import numbers

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


def check_image_shape(input_shape: tuple[int, ...], *, name: str, min_size: int) -> tuple[int, int, int]:
    """Checks, without any compute, that ``input_shape`` is an ``(H, W, C)`` image shape.

    Convolutional models know their geometry statically (strides and poolings), so a
    shape they cannot take is rejected here with a message that names it, before any
    parameter is initialised or any function traced.

    Args:
      input_shape: shape of one example.
      name: the model's name, used in the message.
      min_size: smallest height and width the model's downsampling can take.

    Returns:
      ``(height, width, channels)`` as Python ints.

    Raises:
      ValueError: if the shape is not three positive integers or is spatially too small.
    """
    shape = _int_tuple(input_shape, name=name)
    if len(shape) != 3:
        raise ValueError(f"model {name!r} takes images of shape (height, width, channels), "
                         f"got input_shape={tuple(input_shape)!r}")
    height, width, channels = shape
    if height < min_size or width < min_size:
        raise ValueError(f"model {name!r} cannot take inputs of shape {shape}: height and "
                         f"width must be at least {min_size} for its downsampling")
    return height, width, channels


def check_num_classes(num_classes: int, *, name: str) -> int:
    """Returns ``num_classes`` as an int >= 2, else raises ``ValueError`` naming it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"model {name!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def check_positive_int(value: int, *, field: str, name: str) -> int:
    """Returns ``value`` as a positive int, else raises ``ValueError`` naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"model {name!r}: {field} must be a positive integer, got {value!r}")
    return int(value)


def check_choice(value: str, *, field: str, allowed: tuple[str, ...], name: str) -> str:
    """Returns ``value`` if it is one of ``allowed``, else raises ``ValueError`` naming both."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"model {name!r}: {field} must be one of {list(allowed)}, got {value!r}")
    return value


def _int_tuple(input_shape, *, name: str) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"model {name!r}: input_shape must be a tuple of positive integers, "
                         f"got {input_shape!r}") from None
    if not shape or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        raise ValueError(f"model {name!r}: input_shape must be a non-empty tuple of positive "
                         f"integers, got {input_shape!r}")
    return tuple(int(d) for d in shape)


def check_shape(input_shape: tuple[int, ...], *, name: str) -> tuple[int, ...]:
    """Returns ``input_shape`` as a tuple of positive ints (any rank), else raises ``ValueError``."""
    return _int_tuple(input_shape, name=name)
