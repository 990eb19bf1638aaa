"""Builds a model by name: the one entry point configs use (DESIGN §3)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from fedpriv.models.base import check_input_shape
from fedpriv.models.convnet import convnet
from fedpriv.models.embedding_bag import embedding_bag
from fedpriv.models.lenet import lenet
from fedpriv.models.mlp import mlp
from fedpriv.models.resnet import resnet
from fedpriv.models.transformer import transformer
from fedpriv.typing import Model

_BUILDERS: dict[str, Callable[..., Model]] = {
    "mlp": mlp,
    "lenet": lenet,
    "convnet": convnet,
    "resnet": resnet,
    "embedding_bag": embedding_bag,
    "transformer": transformer,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options ``make_model`` accepts for model ``name``."""
    builder = _builder(name)
    parameters = inspect.signature(builder).parameters
    return tuple(p for p in parameters if p not in ("input_shape", "num_classes"))


def make_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **options) -> Model:
    """Builds the model called ``name``.

    Every argument is checked before any parameter is initialised: the builder checks
    the shape against the model's known geometry, then the model is traced abstractly
    (``jax.eval_shape``, no FLOPs) on one example of ``input_shape``.

    Args:
      name: one of ``MODEL_NAMES``: ``"mlp"``, ``"lenet"``, ``"convnet"``, ``"resnet"``,
        ``"embedding_bag"`` (EHR code bags) or ``"transformer"`` (clinical notes); the
        last two need ``vocabulary_size``.
      input_shape: shape of one example, e.g. ``(32, 32, 1)``.
      num_classes: number of classes.
      **options: the builder's keyword options (``model_options(name)`` lists them), e.g.
        ``width=16`` for ``"convnet"``.

    Returns:
      The ``Model``.

    Raises:
      ValueError: for an unknown name or option (listing the allowed ones), or an input
        shape or option value the model cannot take (naming it).

    Example:
      >>> make_model("convnet", input_shape=(32, 32, 1), num_classes=10, width=16).name
      'convnet'
    """
    builder = _builder(name)
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; allowed options: {list(allowed)}")
    model = builder(input_shape, num_classes, **options)
    check_input_shape(model, model.input_shape)
    return model


def _builder(name: str) -> Callable[..., Model]:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"unknown model name {name!r}; allowed names: {list(MODEL_NAMES)}")
    return _BUILDERS[name]
