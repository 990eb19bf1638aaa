"""A multilayer perceptron on flattened inputs.

The first ``Dense`` layer keeps its bias on purpose: the analytic attack on a
fully-connected layer with bias reads an example straight off that layer's gradients
(``x = dL/dW_i / dL/db_i`` for any unit ``i`` with a non-zero bias gradient).

References:
  Phong, Aono, Hayashi, Wang, Moriai. "Privacy-Preserving Deep Learning via Additively
  Homomorphic Encryption", IEEE TIFS 2018 (the fully-connected leakage); ePrint 2017/715.
  Geiping, Bauermeister, Dröge, Moeller. "Inverting Gradients -- How easy is it to break
  privacy in federated learning?", NeurIPS 2020, arXiv:2003.14053 (Sec. 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedpriv.models.base import check_choice, check_num_classes, check_positive_int, check_shape, from_linen
from fedpriv.typing import Model

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "elu": nn.elu,
}


class MLP(nn.Module):
    """Flatten, ``Dense`` + activation per hidden size, then a ``Dense`` head.

    Attributes:
      hidden_sizes: widths of the hidden layers, named ``dense_0``, ``dense_1``, ...
      num_classes: width of the head (named ``head``).
      activation: a key of ``ACTIVATIONS``.
    """

    hidden_sizes: Sequence[int]
    num_classes: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = x.reshape((x.shape[0], -1))
        for index, size in enumerate(self.hidden_sizes):
            x = act(nn.Dense(size, use_bias=True, name=f"dense_{index}")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden_sizes: Sequence[int] = (256,),
    activation: str = "relu",
) -> Model:
    """Builds an MLP ``Model`` that flattens examples of any shape.

    Args:
      input_shape: shape of one example; it is flattened, so any rank works.
      num_classes: number of classes (>= 2).
      hidden_sizes: widths of the hidden layers; ``()`` gives multinomial logistic
        regression, whose only layer is the head.
      activation: one of ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"elu"``.

    Returns:
      A ``Model`` named ``"mlp"`` with ``head_names=("head",)``.

    Raises:
      ValueError: for a bad shape, class count, hidden size or activation, naming it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = mlp((8, 8, 1), 3, hidden_sizes=(16,))
      >>> params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
      >>> model.apply(params, jnp.zeros((2, 8, 8, 1))).shape
      (2, 3)
      >>> sorted(params)
      ['dense_0', 'head']
    """
    name = "mlp"
    input_shape = check_shape(input_shape, name=name)
    num_classes = check_num_classes(num_classes, name=name)
    try:
        hidden_sizes = tuple(hidden_sizes)
    except TypeError:
        raise ValueError(f"model {name!r}: hidden_sizes must be a sequence of positive "
                         f"integers, got {hidden_sizes!r}") from None
    hidden_sizes = tuple(check_positive_int(size, field="hidden_sizes", name=name) for size in hidden_sizes)
    activation = check_choice(activation, field="activation", allowed=tuple(ACTIVATIONS), name=name)
    module = MLP(hidden_sizes=hidden_sizes, num_classes=num_classes, activation=activation)
    return from_linen(module, input_shape=input_shape, num_classes=num_classes,
                      head_names=("head",), name=name)
