"""A small CIFAR-style ResNet with GroupNorm (ResNet-8 by default).

Stem: 3x3 convolution to ``stage_widths[0]`` channels, norm, ReLU. Then one stage per
entry of ``stage_widths``, each of ``blocks_per_stage`` BasicBlocks (two 3x3 convolutions
with norm, identity shortcut, or a 1x1 projection with norm when the stride or the width
changes); the first stage keeps the resolution and every later stage halves it. Global
average pooling and a ``Dense`` head close the network. With the defaults
(``(16, 32, 64)``, one block per stage) there are 8 weight layers on the main path:
ResNet-8. ``blocks_per_stage=3`` gives the ResNet-20 of He et al. (the CIFAR family that
Inverting Gradients also attacks).

Deviation from the reference: BatchNorm is replaced by GroupNorm (or no normalisation),
because batch statistics mix examples, which breaks per-example DP and per-client
``vmap`` (DESIGN §2). Convolutions followed by a norm have no bias (the norm's shift
plays its part); with ``norm="none"`` they do.

References:
  He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv:1512.03385.
  Wu, He. "Group Normalization", ECCV 2018, arXiv:1803.08494.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedpriv.models.base import check_choice, check_image_shape, check_num_classes, check_positive_int, from_linen
from fedpriv.models.convnet import group_norm
from fedpriv.typing import Model

NORMS = ("group", "none")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    Attributes:
      channels: output channels.
      stride: stride of the first convolution (and of the projection shortcut).
      norm: ``"group"`` or ``"none"``.
      num_groups: requested GroupNorm groups.
    """

    channels: int
    stride: int = 1
    norm: str = "group"
    num_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        use_norm = self.norm == "group"
        strides = (self.stride, self.stride)
        y = nn.Conv(self.channels, (3, 3), strides=strides, padding="SAME", use_bias=not use_norm,
                    name="conv_0")(x)
        if use_norm:
            y = group_norm(self.channels, self.num_groups, name="norm_0")(y)
        y = nn.relu(y)
        y = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=not use_norm, name="conv_1")(y)
        if use_norm:
            y = group_norm(self.channels, self.num_groups, name="norm_1")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = nn.Conv(self.channels, (1, 1), strides=strides, use_bias=not use_norm,
                               name="shortcut_conv")(x)
            if use_norm:
                shortcut = group_norm(self.channels, self.num_groups, name="shortcut_norm")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """Stem ``stem_conv``/``stem_norm``, blocks ``stage{i}_block{j}``, classifier ``head``.

    Attributes:
      num_classes: width of the head.
      stage_widths: channels of each stage; the first sets the stem's width too.
      blocks_per_stage: BasicBlocks in every stage.
      norm: ``"group"`` or ``"none"``.
      num_groups: requested GroupNorm groups.
    """

    num_classes: int
    stage_widths: Sequence[int] = (16, 32, 64)
    blocks_per_stage: int = 1
    norm: str = "group"
    num_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        use_norm = self.norm == "group"
        x = nn.Conv(self.stage_widths[0], (3, 3), padding="SAME", use_bias=not use_norm, name="stem_conv")(x)
        if use_norm:
            x = group_norm(self.stage_widths[0], self.num_groups, name="stem_norm")(x)
        x = nn.relu(x)
        for stage, channels in enumerate(self.stage_widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(channels, stride=stride, norm=self.norm, num_groups=self.num_groups,
                               name=f"stage{stage}_block{block}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    stage_widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    norm: str = "group",
    num_groups: int = 8,
) -> Model:
    """Builds a small ResNet as a ``Model``.

    Args:
      input_shape: ``(H, W, C)`` with ``H, W >= 2 ** (len(stage_widths) - 1)`` so that
        every stride-2 stage halves a map of at least two pixels.
      num_classes: number of classes (>= 2).
      stage_widths: channels per stage.
      blocks_per_stage: BasicBlocks per stage (1: ResNet-8, 3: ResNet-20 for 3 stages).
      norm: ``"group"`` or ``"none"``.
      num_groups: GroupNorm groups requested per layer.

    Returns:
      A ``Model`` named ``"resnet"`` with ``head_names=("head",)``.

    Raises:
      ValueError: for a shape, class count, width list, norm or group count it cannot take.
    """
    name = "resnet"
    try:
        stage_widths = tuple(stage_widths)
    except TypeError:
        raise ValueError(f"model {name!r}: stage_widths must be a non-empty sequence of positive "
                         f"integers, got {stage_widths!r}") from None
    if not stage_widths:
        raise ValueError(f"model {name!r}: stage_widths must be a non-empty sequence of positive "
                         "integers, got ()")
    stage_widths = tuple(check_positive_int(w, field="stage_widths", name=name) for w in stage_widths)
    input_shape = check_image_shape(input_shape, name=name, min_size=2 ** (len(stage_widths) - 1))
    num_classes = check_num_classes(num_classes, name=name)
    blocks_per_stage = check_positive_int(blocks_per_stage, field="blocks_per_stage", name=name)
    norm = check_choice(norm, field="norm", allowed=NORMS, name=name)
    num_groups = check_positive_int(num_groups, field="num_groups", name=name)
    module = ResNet(num_classes=num_classes, stage_widths=stage_widths, blocks_per_stage=blocks_per_stage,
                    norm=norm, num_groups=num_groups)
    return from_linen(module, input_shape=input_shape, num_classes=num_classes,
                      head_names=("head",), name=name)
