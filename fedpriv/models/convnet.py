"""The ConvNet of Inverting Gradients (``inversefed``'s ``ConvNet``), without BatchNorm.

Architecture for width ``w`` (every convolution 3x3, stride 1, padding 1, with bias)::

    conv_0  C  -> w    norm  relu
    conv_1  w  -> 2w   norm  relu
    conv_2  2w -> 2w   norm  relu
    conv_3  2w -> 4w   norm  relu
    conv_4  4w -> 4w   norm  relu
    conv_5  4w -> 4w   norm  relu
    max-pool 3x3, stride 3 (floor)
    conv_6  4w -> 4w   norm  relu
    conv_7  4w -> 4w   norm  relu
    max-pool 3x3, stride 3 (floor)
    flatten, Dense head

On 32x32 inputs the maps go 32 -> 10 -> 3, so the head sees ``3 * 3 * 4w = 36w`` features,
the ``Linear(36 * width, num_classes)`` of the reference; on 64x64 inputs 64 -> 21 -> 7.
The reference source lists a block named ``conv6`` twice inside an ``OrderedDict``; the
second entry replaces the first in place, so the network that actually runs has the eight
convolutions above and pools after the sixth and the eighth. The paper's experiments use
``width=64``, which is the default here.

Deviation from the reference: BatchNorm is replaced by GroupNorm (or no normalisation).
Batch statistics mix the examples of a batch, which breaks per-example gradients for DP
and per-client ``vmap`` (DESIGN §2). Each GroupNorm uses ``gcd(num_groups, channels)``
groups so any width works, with ``epsilon=1e-5`` like PyTorch's norms. Kernels use
Flax's LeCun-normal initialisation and zero biases rather than PyTorch's uniform default.

References:
  Geiping, Bauermeister, Dröge, Moeller. "Inverting Gradients -- How easy is it to break
  privacy in federated learning?", NeurIPS 2020, arXiv:2003.14053.
  Reference code: ``JonasGeiping/invertinggradients``, ``inversefed/nn/models.py``.
  Wu, He. "Group Normalization", ECCV 2018, arXiv:1803.08494.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from fedpriv.models.base import check_choice, check_image_shape, check_num_classes, check_positive_int, from_linen
from fedpriv.typing import Model

WIDTH_MULTIPLIERS = (1, 2, 2, 4, 4, 4, 4, 4)
POOL_AFTER = (5, 7)  # zero-based indices of the convolutions followed by a 3x3/3 max-pool
MIN_SIZE = 9  # two floor-mode 3x3/3 poolings must leave at least one pixel
NORMS = ("group", "none")


def group_norm(channels: int, num_groups: int, name: str) -> nn.GroupNorm:
    """A GroupNorm with ``gcd(num_groups, channels)`` groups, so the count always divides."""
    return nn.GroupNorm(num_groups=math.gcd(num_groups, channels), epsilon=1e-5, name=name)


class ConvNet(nn.Module):
    """Inverting Gradients' ConvNet; convolutions ``conv_0`` .. ``conv_7``, classifier ``head``.

    Attributes:
      num_classes: width of the head.
      width: base width ``w``.
      norm: ``"group"`` (GroupNorm after every convolution, named ``norm_i``) or ``"none"``.
      num_groups: requested GroupNorm groups (``gcd`` with the channel count is used).
    """

    num_classes: int
    width: int = 64
    norm: str = "group"
    num_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index, multiplier in enumerate(WIDTH_MULTIPLIERS):
            channels = multiplier * self.width
            x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{index}")(x)
            if self.norm == "group":
                x = group_norm(channels, self.num_groups, name=f"norm_{index}")(x)
            x = nn.relu(x)
            if index in POOL_AFTER:
                x = nn.max_pool(x, (3, 3), strides=(3, 3), padding="VALID")
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, name="head")(x)


def convnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int = 64,
    norm: str = "group",
    num_groups: int = 8,
) -> Model:
    """Builds Inverting Gradients' ConvNet as a ``Model``.

    Args:
      input_shape: ``(H, W, C)`` with ``H, W >= 9``; the head has
        ``(H // 3 // 3) * (W // 3 // 3) * 4 * width`` inputs.
      num_classes: number of classes (>= 2).
      width: base width ``w`` (64 in the paper; 16 is a common cheap choice).
      norm: ``"group"`` or ``"none"``.
      num_groups: GroupNorm groups requested per layer.

    Returns:
      A ``Model`` named ``"convnet"`` with ``head_names=("head",)``.

    Raises:
      ValueError: for a shape, class count, width, norm or group count it cannot take.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = convnet((32, 32, 1), 10, width=4)
      >>> x = jnp.zeros((1, 32, 32, 1))
      >>> params = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only, no compute
      >>> params["head"]["kernel"].shape  # 36 * width features
      (144, 10)
    """
    name = "convnet"
    input_shape = check_image_shape(input_shape, name=name, min_size=MIN_SIZE)
    num_classes = check_num_classes(num_classes, name=name)
    width = check_positive_int(width, field="width", name=name)
    norm = check_choice(norm, field="norm", allowed=NORMS, name=name)
    num_groups = check_positive_int(num_groups, field="num_groups", name=name)
    module = ConvNet(num_classes=num_classes, width=width, norm=norm, num_groups=num_groups)
    return from_linen(module, input_shape=input_shape, num_classes=num_classes,
                      head_names=("head",), name=name)
