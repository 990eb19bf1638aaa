"""The embedding-bag model against explicit NumPy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.models.embedding_bag import embedding_bag

CODES = np.array([[3, 5, 5, 9, 0, 0], [1, 2, 0, 0, 0, 0], [7, 7, 7, 7, 7, 7]], dtype=np.int32)


def _oracle_logits(params, codes, pooling):
    table = np.asarray(params["embedding"]["embedding"], dtype=np.float64)
    logits = []
    for row in codes:
        pooled = np.zeros(table.shape[1])
        for token in row:
            if token != 0:
                pooled += table[token]
        if pooling == "mean":
            pooled /= max(int(np.sum(row != 0)), 1)
        hidden = np.maximum(pooled @ np.asarray(params["dense_0"]["kernel"]) + np.asarray(params["dense_0"]["bias"]), 0)
        logits.append(hidden @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"]))
    return np.array(logits)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_logits_match_explicit_loop(pooling):
    model = embedding_bag((6,), 4, vocabulary_size=12, embedding_dim=5, hidden_sizes=(7,), pooling=pooling)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
    assert sorted(params) == ["dense_0", "embedding", "head"]
    assert params["embedding"]["embedding"].shape == (12, 5) and model.head_names == ("head",)
    np.testing.assert_allclose(jax.jit(model.apply)(params, CODES), _oracle_logits(params, CODES, pooling), rtol=1e-5, atol=1e-6)


def test_padding_contributes_nothing():
    model = embedding_bag((6,), 4, vocabulary_size=12, embedding_dim=5, hidden_sizes=(7,))
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 6), jnp.int32))
    batch = {"x": jnp.asarray(CODES), "y": jnp.array([0, 1, 3])}
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.per_example_loss(p, batch))))(params)
    table_grad = np.asarray(grads["embedding"]["embedding"])
    assert np.all(table_grad[0] == 0.0)  # exactly zero, not just small
    used = np.unique(CODES[CODES > 0])
    assert np.all(np.abs(table_grad[used]).sum(axis=1) > 0)
    assert np.all(np.delete(table_grad, used, axis=0) == 0.0)
    # Changing the padding row changes no output.
    moved = jax.tree_util.tree_map(lambda a: a, params)
    moved["embedding"]["embedding"] = params["embedding"]["embedding"].at[0].set(100.0)
    np.testing.assert_array_equal(jax.jit(model.apply)(moved, CODES), jax.jit(model.apply)(params, CODES))


def test_row_gradient_is_count_times_pooled_gradient():
    """One record, sum pooling: row c of the table gradient = count_c * dL/dpooled."""
    model = embedding_bag((6,), 4, vocabulary_size=12, embedding_dim=5, hidden_sizes=(7,))
    params = jax.jit(model.init)(jax.random.key(2), jnp.zeros((1, 6), jnp.int32))
    batch = {"x": jnp.asarray(CODES[:1]), "y": jnp.array([2])}
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.per_example_loss(p, batch))))(params)
    table_grad = np.asarray(grads["embedding"]["embedding"], np.float64)
    pooled_grad = np.asarray(params["dense_0"]["kernel"]) @ np.asarray(grads["dense_0"]["bias"])
    for token, count in ((3, 1), (5, 2), (9, 1)):
        np.testing.assert_allclose(table_grad[token], count * pooled_grad, rtol=1e-5, atol=1e-7)


def test_multi_label_uses_summed_sigmoid_cross_entropy():
    model = embedding_bag((6,), 3, vocabulary_size=12, embedding_dim=5, hidden_sizes=(), multi_label=True)
    params = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 6), jnp.int32))
    assert sorted(params) == ["embedding", "head"]
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=np.int32)
    loss = np.asarray(jax.jit(model.per_example_loss)(params, {"x": CODES, "y": y}))
    z = np.asarray(jax.jit(model.apply)(params, CODES), np.float64)
    expected = np.sum(np.log1p(np.exp(-z)) * y + np.log1p(np.exp(z)) * (1 - y), axis=1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    single = embedding_bag((6,), 3, vocabulary_size=12, embedding_dim=5)
    p = jax.jit(single.init)(jax.random.key(3), jnp.zeros((1, 6), jnp.int32))
    np.testing.assert_allclose(single.per_example_loss(p, {"x": CODES, "y": jnp.array([0, 1, 2])}),
                               optax.softmax_cross_entropy_with_integer_labels(single.apply(p, CODES),
                                                                               jnp.array([0, 1, 2])), rtol=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    ({"pooling": "max"}, "pooling"), ({"input_shape": (4, 4)}, "input_shape"),
    ({"vocabulary_size": 1}, "vocabulary_size"), ({"embedding_dim": 0}, "embedding_dim"),
    ({"num_classes": 1}, "num_classes"), ({"hidden_sizes": (8, -1)}, "hidden_sizes"),
])
def test_bad_arguments_are_named(kwargs, field):
    arguments = {"input_shape": (6,), "num_classes": 3, "vocabulary_size": 12, **kwargs}
    with pytest.raises(ValueError, match=field):
        embedding_bag(arguments.pop("input_shape"), arguments.pop("num_classes"), **arguments)
