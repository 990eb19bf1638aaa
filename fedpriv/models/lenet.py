"""The LeNet variant of Deep Leakage from Gradients (DLG).

Four 5x5 convolutions with 12 channels and sigmoid activations, strides ``(2, 2, 1, 1)``,
then one ``Dense`` head. Sigmoid keeps the model twice differentiable everywhere, which
gradient matching needs. On 32x32 inputs the head sees ``8 * 8 * 12 = 768`` features,
as in the reference code.

Padding is two pixels on every side, as PyTorch's ``padding=5 // 2`` in the reference
code. For stride 1 this is exactly ``'SAME'``; for stride 2 it gives the same output size
as ``'SAME'`` (``ceil(H / 2)``) but pads symmetrically where XLA's ``'SAME'`` would pad
``(1, 2)`` on even sizes, so the receptive fields line up with the reference.

References:
  Zhu, Liu, Han. "Deep Leakage from Gradients", NeurIPS 2019, arXiv:1906.08935.
  Reference code: ``mit-han-lab/dlg``, ``models/vision.py`` (``LeNet``, ``weights_init``).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from fedpriv.models.base import check_choice, check_image_shape, check_num_classes, check_positive_int, from_linen
from fedpriv.typing import Model

STRIDES = (2, 2, 1, 1)
MIN_SIZE = 4  # two stride-2 convolutions
WEIGHT_INITS = ("dlg", "lecun")


def _uniform(scale: float):
    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

    return init


class LeNet(nn.Module):
    """DLG's LeNet. Convolutions are ``conv_0`` .. ``conv_3``, the classifier is ``head``.

    Attributes:
      num_classes: width of the head.
      channels: channels of every convolution (12 in DLG).
      weight_init: ``"dlg"`` draws every weight and bias from ``U(-0.5, 0.5)`` as DLG's
        ``weights_init`` does (the attack's success depends on it); ``"lecun"`` keeps
        Flax's defaults (LeCun-normal kernels, zero biases).
    """

    num_classes: int
    channels: int = 12
    weight_init: str = "dlg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.weight_init == "dlg":
            kw = {"kernel_init": _uniform(0.5), "bias_init": _uniform(0.5)}
        else:
            kw = {}
        for index, stride in enumerate(STRIDES):
            x = nn.Conv(self.channels, (5, 5), strides=(stride, stride), padding=((2, 2), (2, 2)),
                        name=f"conv_{index}", **kw)(x)
            x = nn.sigmoid(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, name="head", **kw)(x)


def lenet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: int = 12,
    weight_init: str = "dlg",
) -> Model:
    """Builds DLG's LeNet as a ``Model``.

    Args:
      input_shape: ``(H, W, C)`` with ``H, W >= 4``; the head has
        ``ceil(H / 4) * ceil(W / 4) * channels`` inputs.
      num_classes: number of classes (>= 2).
      channels: channels of every convolution.
      weight_init: ``"dlg"`` (uniform in ``[-0.5, 0.5]``, as the reference) or ``"lecun"``.

    Returns:
      A ``Model`` named ``"lenet"`` with ``head_names=("head",)``.

    Raises:
      ValueError: for a shape, class count, channel count or init it cannot take.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = lenet((32, 32, 3), 10)
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> params = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only, no compute
      >>> params["head"]["kernel"].shape
      (768, 10)
    """
    name = "lenet"
    input_shape = check_image_shape(input_shape, name=name, min_size=MIN_SIZE)
    num_classes = check_num_classes(num_classes, name=name)
    channels = check_positive_int(channels, field="channels", name=name)
    weight_init = check_choice(weight_init, field="weight_init", allowed=WEIGHT_INITS, name=name)
    module = LeNet(num_classes=num_classes, channels=channels, weight_init=weight_init)
    return from_linen(module, input_shape=input_shape, num_classes=num_classes,
                      head_names=("head",), name=name)
