"""Built-in models: shapes, statelessness, split point, loss, trainability, geometry."""

from __future__ import annotations

import doctest
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.models import LeNet, convnet, from_linen, lenet, make_model, mlp, resnet

SHAPES = [(32, 32, 1), (32, 32, 3), (64, 64, 1)]
# Small widths keep the eager init/apply cheap; the geometry does not depend on width.
CONFIGS = [
    ("mlp", {"hidden_sizes": (16,)}),
    ("lenet", {}),
    ("convnet", {"width": 4}),
    ("resnet", {"stage_widths": (4, 8, 8)}),
]
NUM_CLASSES = 7
# Init values do not matter to these checks. XLA:CPU compiles threefry random bits
# ~10x slower than the "rbg" generator (1-3 s per parameter shape here), so tests that
# only need some params draw them with rbg; the model code is key-agnostic.
KEY = jax.random.key(0, impl="rbg")


def _abstract_params(model, shape):
    """Param shapes without any compute (init is only traced)."""
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape), jnp.float32))


def _param_count(model, shape):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(_abstract_params(model, shape)))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,options", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_init_apply_split_and_loss(name, options, shape):
    model = make_model(name, input_shape=shape, num_classes=NUM_CLASSES, **options)
    assert model.name == name and model.input_shape == shape and model.num_classes == NUM_CLASSES
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, *shape)), jnp.float32)
    params = model.init(KEY, x)
    logits = model.apply(params, x)
    assert logits.shape == (3, NUM_CLASSES)
    assert np.all(np.isfinite(np.asarray(logits)))
    # Examples are processed independently (no batch statistics): one example alone
    # gives the same logits as inside the batch.
    np.testing.assert_allclose(model.apply(params, x[1:2]), logits[1:2], rtol=1e-5, atol=1e-5)

    features, head = model.split_params(params)
    assert model.head_names == ("head",)
    assert set(head) == {"head"} and jax.tree.leaves(head)
    assert features and jax.tree.leaves(features)
    assert set(features) | set(head) == set(params) and not set(features) & set(head)
    assert len(jax.tree.leaves(features)) + len(jax.tree.leaves(head)) == len(jax.tree.leaves(params))

    y = jnp.array([0, 3, NUM_CLASSES - 1])
    losses = model.per_example_loss(params, {"x": x, "y": y})
    z = np.asarray(logits, np.float64)
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(3), np.asarray(y)]
    assert losses.shape == (3,)
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-5)


def test_from_linen_rejects_mutable_collections():
    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=False)(x.reshape((x.shape[0], -1)))
            return nn.Dense(2, name="head")(x)

    model = from_linen(WithBatchNorm(), input_shape=(4,), num_classes=2, head_names=("head",), name="bn")
    with pytest.raises(ValueError, match="batch_stats"):
        model.init(KEY, jnp.zeros((2, 4)))


@pytest.mark.parametrize("name,options", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_params_are_the_only_collection(name, options):
    # init would raise on any other collection; also the returned tree is plain params.
    model = make_model(name, input_shape=(32, 32, 1), num_classes=3, **options)
    params = _abstract_params(model, (32, 32, 1))
    assert "params" not in params and "batch_stats" not in params
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_convnet_architecture_matches_inverting_gradients():
    for width in (16, 64):
        model = convnet((32, 32, 1), 10, width=width)
        params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
        channels = [params[f"conv_{i}"]["kernel"].shape[-1] for i in range(8)]
        assert channels == [m * width for m in (1, 2, 2, 4, 4, 4, 4, 4)]
        assert all(params[f"conv_{i}"]["kernel"].shape[:2] == (3, 3) for i in range(8))
        # 32 -> 10 -> 3 after the two 3x3/3 poolings: the reference's Linear(36 * width).
        assert params["head"]["kernel"].shape == (36 * width, 10)
        # conv kernels + conv biases + GroupNorm scale/shift + head, written out by hand.
        expected = 9 * (1 * width + 78 * width**2) + 25 * width + 50 * width + 36 * width * 10 + 10
        assert _param_count(model, (32, 32, 1)) == expected
    assert _param_count(convnet((32, 32, 1), 10, width=16), (32, 32, 1)) == 186_826
    assert _param_count(convnet((32, 32, 1), 10, width=64), (32, 32, 1)) == 2_903_818
    assert _param_count(convnet((32, 32, 1), 10, width=16, norm="none"), (32, 32, 1)) == 186_826 - 800
    big = jax.eval_shape(convnet((64, 64, 3), 10, width=8).init, jax.random.key(0),
                         jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    assert big["head"]["kernel"].shape == (7 * 7 * 32, 10)  # 64 -> 21 -> 7


def test_lenet_matches_dlg():
    model = lenet((32, 32, 3), 10)
    params = model.init(KEY, jnp.zeros((1, 32, 32, 3)))
    assert [params[f"conv_{i}"]["kernel"].shape for i in range(4)] == [(5, 5, 3, 12)] + [(5, 5, 12, 12)] * 3
    assert params["head"]["kernel"].shape == (768, 10)  # 32 -> 16 -> 8, 8 * 8 * 12
    leaves = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(params)])
    assert leaves.min() >= -0.5 and leaves.max() <= 0.5 and leaves.std() > 0.25  # U(-0.5, 0.5)
    lecun = lenet((32, 32, 3), 10, weight_init="lecun").init(KEY, jnp.zeros((1, 32, 32, 3)))
    assert np.all(np.asarray(lecun["conv_0"]["bias"]) == 0)
    assert np.abs(np.asarray(lecun["head"]["kernel"])).max() < 0.5 * np.abs(np.asarray(params["head"]["kernel"])).max()
    odd = _abstract_params(lenet((33, 9, 1), 4), (33, 9, 1))
    assert odd["head"]["kernel"].shape == (9 * 3 * 12, 4)  # ceil(33/4) * ceil(9/4) * 12


def test_lenet_pads_two_pixels_on_every_side():
    # DLG's PyTorch code pads 5 // 2 = 2 on each side; XLA's 'SAME' would pad (1, 2) for a
    # stride-2 conv on an even size. Check the module's first conv against a manual loop.
    params = lenet((8, 8, 1), 2).init(KEY, jnp.zeros((1, 8, 8, 1)))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 8, 8, 1)), jnp.float32)
    _, state = LeNet(num_classes=2).apply({"params": params}, x, capture_intermediates=True,
                                          mutable=["intermediates"])
    conv_0 = np.asarray(state["intermediates"]["conv_0"]["__call__"][0])
    kernel, bias = np.asarray(params["conv_0"]["kernel"]), np.asarray(params["conv_0"]["bias"])
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    manual = np.zeros((4, 4, 12))
    for i in range(4):
        for j in range(4):
            patch = padded[0, 2 * i : 2 * i + 5, 2 * j : 2 * j + 5, :]
            manual[i, j] = np.einsum("hwc,hwco->o", patch, kernel) + bias
    np.testing.assert_allclose(conv_0[0], manual, rtol=1e-4, atol=1e-4)


def test_mlp_first_layer_has_bias_and_hidden_sizes():
    model = mlp((4, 4, 2), 5, hidden_sizes=(12, 6), activation="tanh")
    params = _abstract_params(model, (4, 4, 2))
    assert params["dense_0"]["kernel"].shape == (32, 12) and params["dense_0"]["bias"].shape == (12,)
    assert params["dense_1"]["kernel"].shape == (12, 6)
    assert params["head"]["kernel"].shape == (6, 5)


def test_resnet_blocks_and_projection():
    model = resnet((32, 32, 3), 10, stage_widths=(8, 16), blocks_per_stage=2)
    params = _abstract_params(model, (32, 32, 3))
    assert {k for k in params if k.startswith("stage")} == {"stage0_block0", "stage0_block1",
                                                           "stage1_block0", "stage1_block1"}
    assert "shortcut_conv" in params["stage1_block0"] and "shortcut_conv" not in params["stage1_block1"]
    assert "shortcut_conv" not in params["stage0_block0"]  # stem already has stage 0's width
    assert "bias" not in params["stem_conv"]  # followed by GroupNorm
    plain = _abstract_params(resnet((32, 32, 3), 10, norm="none"), (32, 32, 3))
    assert "bias" in plain["stem_conv"] and "stem_norm" not in plain


@pytest.mark.parametrize("name,options,learning_rate", [
    ("mlp", {"hidden_sizes": (32,)}, 0.1),
    ("lenet", {}, 0.05),
])
def test_fits_a_tiny_batch(name, options, learning_rate):
    model = make_model(name, input_shape=(16, 16, 1), num_classes=4, **options)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 16, 16, 1)), jnp.float32)
    y = jnp.arange(8) % 4
    batch = {"x": x, "y": y}
    params = model.init(KEY, x)
    optimizer = optax.sgd(learning_rate)
    state = optimizer.init(params)

    def loss_fn(p):
        return jnp.mean(model.per_example_loss(p, batch))

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(30):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    final = float(jax.jit(loss_fn)(params))
    assert final < 0.5 * losses[0], (losses[0], final)


def test_per_example_gradients_under_vmap_match_a_loop():
    # Models are vmapped per example (DP) and per client: no hidden batch coupling.
    model = make_model("lenet", input_shape=(8, 8, 1), num_classes=3)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 8, 8, 1)), jnp.float32)
    y = jnp.array([0, 1, 2])
    params = model.init(KEY, x)

    def single(p, xi, yi):
        return model.per_example_loss(p, {"x": xi[None], "y": yi[None]})[0]

    vmapped = jax.jit(jax.vmap(jax.grad(single), in_axes=(None, 0, 0)))(params, x, y)
    grad = jax.jit(jax.grad(single))
    for i in range(3):
        looped = grad(params, x[i], y[i])
        for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(vmapped)):
            np.testing.assert_allclose(b[i], a, rtol=1e-4, atol=1e-6)
            assert np.abs(np.asarray(a)).max() > 1e-4


@pytest.mark.parametrize("module", ["fedpriv.models.mlp", "fedpriv.models.lenet", "fedpriv.models.convnet",
                                    "fedpriv.models.registry"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
