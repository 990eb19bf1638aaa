"""make_model: names, options and input shapes are checked before any compute."""

from __future__ import annotations

import re

import pytest

from fedpriv.models import MODEL_NAMES, convnet, lenet, make_model, model_options, resnet
from fedpriv.models import registry


def test_names():
    assert MODEL_NAMES == ("mlp", "lenet", "convnet", "resnet", "embedding_bag", "transformer")


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError) as error:
        make_model("vgg16", input_shape=(32, 32, 1), num_classes=10)
    message = str(error.value)
    assert "'vgg16'" in message
    for name in MODEL_NAMES:
        assert name in message


@pytest.mark.parametrize("name,shape", [
    ("convnet", (8, 8, 1)),  # too small for two 3x3/3 poolings
    ("convnet", (32, 5, 1)),
    ("lenet", (3, 32, 1)),
    ("resnet", (32, 3, 3)),  # three stages need 4 pixels
    ("lenet", (32, 32)),  # not (H, W, C)
    ("convnet", (1, 32, 32, 1)),
    ("mlp", (0, 4)),
    ("mlp", (4, -1)),
    ("lenet", "32x32"),
])
def test_bad_input_shape_is_named(name, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape) if not isinstance(shape, str) else "'32x32'")):
        make_model(name, input_shape=shape, num_classes=10)


def test_shape_rejected_before_any_compute(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("traced or initialised a model for a bad shape")

    monkeypatch.setattr(registry, "check_input_shape", fail)
    with pytest.raises(ValueError, match=re.escape("(8, 8, 1)")):
        make_model("convnet", input_shape=(8, 8, 1), num_classes=10)


def test_smallest_shapes_accepted():
    assert make_model("convnet", input_shape=(9, 9, 1), num_classes=2, width=2).input_shape == (9, 9, 1)
    assert make_model("lenet", input_shape=(8, 8, 1), num_classes=2).input_shape == (8, 8, 1)
    assert make_model("resnet", input_shape=(8, 8, 3), num_classes=2, stage_widths=(4,)).input_shape == (8, 8, 3)
    assert make_model("mlp", input_shape=(5,), num_classes=2).input_shape == (5,)


def test_options():
    assert model_options("convnet") == ("width", "norm", "num_groups")
    assert model_options("mlp") == ("hidden_sizes", "activation")
    with pytest.raises(ValueError, match=r"'depth'.*allowed options.*width"):
        make_model("convnet", input_shape=(32, 32, 1), num_classes=10, depth=3)


@pytest.mark.parametrize("build,field,value", [
    (lambda: convnet((32, 32, 1), 10, norm="batch"), "norm", "'batch'"),
    (lambda: convnet((32, 32, 1), 10, width=0), "width", "0"),
    (lambda: resnet((32, 32, 1), 10, stage_widths=()), "stage_widths", "()"),
    (lambda: resnet((32, 32, 1), 10, norm="batch"), "norm", "'batch'"),
    (lambda: lenet((32, 32, 1), 10, weight_init="xavier"), "weight_init", "'xavier'"),
    (lambda: make_model("mlp", input_shape=(4,), num_classes=2, activation="swish"), "activation", "'swish'"),
    (lambda: make_model("mlp", input_shape=(4,), num_classes=2, hidden_sizes=(8, 0)), "hidden_sizes", "0"),
    (lambda: make_model("mlp", input_shape=(4,), num_classes=1), "num_classes", "1"),
    (lambda: make_model("lenet", input_shape=(32, 32, 1), num_classes=True), "num_classes", "True"),
])
def test_bad_option_values_are_named(build, field, value):
    with pytest.raises(ValueError) as error:
        build()
    assert field in str(error.value) and value in str(error.value)
