"""The Transformer classifier against a NumPy oracle, and exact padding masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.models.base import check_input_shape
from fedpriv.models.transformer import TOKEN_EMBEDDING_PATH, masked_attention, transformer

VOCABULARY = 40


def numpy_forward(params, tokens, num_heads, pooling="mean"):
    """An explicit, loop-based forward pass of the classifier for one example."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def layer_norm(x, norm):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-6) * norm["scale"] + norm["bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    tokens = list(tokens)
    if pooling == "cls":
        tokens = [2] + tokens
    real = [i for i, t in enumerate(tokens) if t != 0 or (pooling == "cls" and i == 0)]
    h = np.stack([p["token_embedding"]["embedding"][t] for t in tokens])
    h = h + p["position_embedding"]["embedding"][: len(tokens)]
    block_index = 0
    while f"block_{block_index}" in p:
        block = p[f"block_{block_index}"]
        normed = layer_norm(h, block["attention_norm"])
        q, k, v = (np.einsum("ld,dhe->lhe", normed, block[n]["kernel"]) + block[n]["bias"]
                   for n in ("query", "key", "value"))
        attended = np.zeros_like(q)
        for head in range(num_heads):
            for i in range(len(tokens)):
                scores = np.array([q[i, head] @ k[j, head] / math.sqrt(q.shape[-1]) for j in real])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                attended[i, head] = sum(w * v[j, head] for w, j in zip(weights, real))
        out = block["attention_output"]
        h = h + np.einsum("lhe,hed->ld", attended, out["kernel"]) + out["bias"]
        normed = layer_norm(h, block["mlp_norm"])
        hidden = gelu(normed @ block["mlp_hidden"]["kernel"] + block["mlp_hidden"]["bias"])
        h = h + hidden @ block["mlp_output"]["kernel"] + block["mlp_output"]["bias"]
        block_index += 1
    h = layer_norm(h, p["final_norm"])
    pooled = h[0] if pooling == "cls" else h[real].mean(0)
    return pooled @ p["head"]["kernel"] + p["head"]["bias"]


def random_params(model, key=0):
    params = jax.jit(model.init)(jax.random.key(key), jnp.zeros((1, *model.input_shape), jnp.int32))
    # Spread every parameter so the oracle comparison exercises biases and norms too.
    rng = np.random.default_rng(key)
    return jax.tree_util.tree_map(lambda a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32), params)


@pytest.mark.parametrize("pooling, num_layers", [("mean", 1), ("cls", 2)])
def test_matches_the_numpy_oracle(pooling, num_layers):
    model = transformer((6,), 3, vocabulary_size=VOCABULARY, embedding_dim=8, num_heads=2,
                        num_layers=num_layers, mlp_dim=12, pooling=pooling)
    params = random_params(model)
    tokens = np.array([[5, 9, 9, 31, 0, 0], [7, 3, 11, 4, 20, 39]], np.int32)
    logits = np.asarray(jax.jit(model.apply)(params, jnp.asarray(tokens)))
    for row in range(2):
        np.testing.assert_allclose(logits[row], numpy_forward(params, tokens[row], 2, pooling), rtol=1e-4, atol=1e-4)


def test_padding_changes_no_logit(pooling="mean"):
    """[a b c 0 0 0 0 0] on max_len 8 == [a b c] on max_len 3 with the first positions."""
    long_model = transformer((8,), 4, vocabulary_size=VOCABULARY, embedding_dim=16, num_heads=4, pooling=pooling)
    short_model = transformer((3,), 4, vocabulary_size=VOCABULARY, embedding_dim=16, num_heads=4, pooling=pooling)
    params = random_params(long_model)
    offset = 1 if pooling == "cls" else 0
    short_params = dict(params, position_embedding={
        "embedding": params["position_embedding"]["embedding"][: 3 + offset]})
    tokens = jnp.array([[12, 5, 30, 0, 0, 0, 0, 0]], jnp.int32)
    long_apply = jax.jit(long_model.apply)
    np.testing.assert_allclose(long_apply(params, tokens), jax.jit(short_model.apply)(short_params, tokens[:, :3]),
                               rtol=1e-5, atol=1e-5)
    # Changing what the padding embedding holds changes nothing at all.
    table = params["token_embedding"]["embedding"]
    moved = dict(params, token_embedding={"embedding": table.at[0].set(100.0)})
    np.testing.assert_array_equal(long_apply(params, tokens), long_apply(moved, tokens))


def test_padding_rows_get_exactly_zero_gradient_and_relaxed_inputs_match_ids():
    model = transformer((8,), 3, vocabulary_size=VOCABULARY, embedding_dim=16, num_heads=2, num_layers=2)
    params = random_params(model)
    tokens = jnp.array([[4, 9, 4, 17, 0, 0, 0, 0], [8, 8, 3, 0, 0, 0, 0, 0]], jnp.int32)
    labels = jnp.array([1, 2])
    one_hot = jax.nn.one_hot(tokens, VOCABULARY)

    @jax.jit
    def both_ways(params):  # one program: ids and their one-hot rows, logits and gradients
        def loss(p, x):
            return model.per_example_loss(p, {"x": x, "y": labels}).mean()
        return (model.apply(params, tokens), model.apply(params, one_hot),
                jax.grad(loss)(params, tokens), jax.grad(loss)(params, one_hot))

    logits, relaxed_logits, gradient, relaxed_gradient = both_ways(params)
    table = np.asarray(gradient["token_embedding"]["embedding"])
    assert sorted(np.flatnonzero(np.any(table != 0, axis=1)).tolist()) == [3, 4, 8, 9, 17]
    positions = np.asarray(gradient["position_embedding"]["embedding"])
    assert np.flatnonzero(np.any(positions != 0, axis=1)).tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(relaxed_logits, logits, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(gradient), jax.tree_util.tree_leaves(relaxed_gradient)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert TOKEN_EMBEDDING_PATH == ("token_embedding", "embedding")


def test_all_padding_example_is_finite_and_contributes_no_gradient():
    model = transformer((5,), 3, vocabulary_size=VOCABULARY, embedding_dim=8, num_heads=2)
    params = random_params(model)
    tokens = jnp.array([[6, 7, 0, 0, 0], [0, 0, 0, 0, 0]], jnp.int32)
    mask = jnp.array([1.0, 0.0])

    def loss(p):
        losses = model.per_example_loss(p, {"x": tokens, "y": jnp.array([0, 0])})
        return jnp.sum(jnp.where(mask > 0, losses, 0.0))

    alone_loss = lambda p: model.per_example_loss(p, {"x": tokens[:1], "y": jnp.array([0])}).sum()
    gradient, alone = jax.jit(lambda p: (jax.grad(loss)(p), jax.grad(alone_loss)(p)))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(gradient))
    for a, b in zip(jax.tree_util.tree_leaves(gradient), jax.tree_util.tree_leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_masked_attention_against_an_explicit_loop():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 5, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], np.float32)
    out = np.asarray(jax.jit(masked_attention)(q, k, v, mask))
    for head in range(3):
        for i in range(5):
            keys = [0, 1, 3]
            scores = np.array([np.dot(q[0, i, head], k[0, j, head]) / 2.0 for j in keys])
            weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            expected = sum(w * v[0, j, head] for w, j in zip(weights, keys))
            np.testing.assert_allclose(out[0, i, head], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)  # no real key: zeros, not NaN
    gradient = jax.jit(jax.grad(lambda kk: masked_attention(q, kk, v, mask).sum()))(k)
    np.testing.assert_array_equal(np.asarray(gradient)[0, [2, 4]], 0.0)  # padded keys get no gradient
    assert np.isfinite(np.asarray(gradient)).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(8, 2)), "token sequences of shape \\(max_len,\\)"),
    (dict(pooling="max"), "pooling must be one of \\['mean', 'cls'\\], got 'max'"),
    (dict(embedding_dim=10, num_heads=4), "embedding_dim must be a multiple of num_heads=4, got 10"),
    (dict(num_layers=0), "num_layers must be a positive integer, got 0"),
    (dict(vocabulary_size=2, pooling="cls"), "vocabulary_size must be >= 4"),
    (dict(num_classes=1), "num_classes must be an integer >= 2"),
])
def test_bad_arguments_are_refused_before_any_compute(kwargs, message):
    arguments = dict(input_shape=(8,), num_classes=3, vocabulary_size=VOCABULARY)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        transformer(arguments.pop("input_shape"), arguments.pop("num_classes"), **arguments)


def test_a_sequence_of_the_wrong_length_is_refused():
    model = transformer((16,), 3, vocabulary_size=VOCABULARY, embedding_dim=8, num_heads=2)
    check_input_shape(model, (16,))
    with pytest.raises(ValueError, match="takes \\[B, 16\\] token ids .* got shape \\(1, 17\\)"):
        check_input_shape(model, (17,))
