"""Compression defenses: top-k against a NumPy oracle, unbiasedness, grid bounds, bytes, DLG demo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.compression import CompressionPlan
from fedpriv.defenses.compression import dense_bytes
from fedpriv.defenses.compression import kept_count
from fedpriv.defenses.compression import random_sparsification
from fedpriv.defenses.compression import sign_compression
from fedpriv.defenses.compression import stochastic_quantization
from fedpriv.defenses.compression import top_k_sparsification
from fedpriv.models.mlp import mlp


def tied_update(seed=0):
    # Small integers: many exact ties in magnitude, also across signs.
    rng = np.random.default_rng(seed)
    return {"kernel": jnp.asarray(rng.integers(-4, 5, size=(6, 7)), jnp.float32),
            "bias": jnp.asarray(rng.integers(-4, 5, size=(9,)), jnp.float32)}


def flat(tree):
    return np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def top_k_oracle(values, k):
    """Keeps the k largest |values|, first index first among ties (stable argsort)."""
    values = np.asarray(values).ravel()
    keep = np.argsort(-np.abs(values), kind="stable")[:k]
    out = np.zeros_like(values)
    out[keep] = values[keep]
    return out


def apply(transform, updates):
    return jax.jit(transform.update)(updates, transform.init(updates))[0]


@pytest.mark.parametrize("keep_fraction", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_top_k_per_tensor_keeps_exactly_the_k_largest(keep_fraction):
    update = tied_update()
    pruned = apply(top_k_sparsification(keep_fraction), update)
    for name in update:
        k = kept_count(keep_fraction, update[name].size)
        np.testing.assert_array_equal(np.asarray(pruned[name]).ravel(), top_k_oracle(update[name], k))
        assert np.count_nonzero(np.asarray(pruned[name])) <= k


@pytest.mark.parametrize("keep_fraction", [0.05, 0.3, 0.9])
def test_top_k_global_keeps_exactly_the_k_largest_of_the_whole_update(keep_fraction):
    update = tied_update(1)
    pruned = apply(top_k_sparsification(keep_fraction, scope="global"), update)
    k = kept_count(keep_fraction, 51)
    np.testing.assert_array_equal(flat(pruned), top_k_oracle(flat(update), k))


def test_kept_count_rounds_sensibly():
    assert kept_count(0.1, 10) == 1  # 0.1 * 10 is 1.0000000000000002 in floating point
    assert kept_count(0.01, 10) == 1  # never zero
    assert kept_count(0.25, 9) == 3
    assert kept_count(1.0, 7) == 7


def test_random_sparsification_is_unbiased_with_rescale_and_shrinks_without():
    p, draws = 0.3, 4000
    update = {"w": jnp.linspace(-2.0, 3.0, 24).reshape(4, 6), "b": jnp.array([1.5, -0.5])}
    keys = jax.random.split(jax.random.key(0), draws)

    def sparsified(rescale):
        transform = random_sparsification(p, jax.random.key(0), rescale=rescale)
        states = jax.vmap(lambda key: random_sparsification(p, key, rescale=rescale).init(update))(keys)
        out, _ = jax.jit(jax.vmap(transform.update, in_axes=(None, 0)))(update, states)
        return np.concatenate([np.asarray(leaf).reshape(draws, -1) for leaf in jax.tree_util.tree_leaves(out)], 1)

    rescaled = sparsified(True)
    target = flat(update)
    standard_error = target * math.sqrt((1 - p) / p) / math.sqrt(draws)
    z_scores = (rescaled.mean(0) - target) / np.where(standard_error == 0, 1, np.abs(standard_error))
    assert np.max(np.abs(z_scores)) < 4.5, z_scores
    assert np.mean(rescaled != 0) == pytest.approx(p, abs=0.01)
    np.testing.assert_allclose(np.unique(np.abs(rescaled[0][rescaled[0] != 0] / target[rescaled[0] != 0])), 1 / p,
                               rtol=1e-6)
    plain = sparsified(False)
    assert set(np.unique(plain / np.where(target == 0, 1, target))) <= {0.0, 1.0}
    # Distinct clients get distinct masks.
    assert len({row.tobytes() for row in (rescaled != 0)[:50]}) > 45


@pytest.mark.parametrize("bits", [1, 4])
def test_stochastic_quantization_is_unbiased_on_the_grid_and_within_one_level(bits):
    draws = 3000
    update = {"w": jnp.array([[-1.3, 0.2, 0.77], [2.0, -0.05, 0.0]]), "z": jnp.zeros((3,))}
    keys = jax.random.split(jax.random.key(bits), draws)
    transform = stochastic_quantization(bits, jax.random.key(0))
    states = jax.vmap(lambda key: stochastic_quantization(bits, key).init(update))(keys)
    out, _ = jax.jit(jax.vmap(transform.update, in_axes=(None, 0)))(update, states)
    w = np.asarray(out["w"]).reshape(draws, -1)
    np.testing.assert_array_equal(np.asarray(out["z"]), 0.0)  # an all-zero tensor stays zero
    x = np.asarray(update["w"]).ravel()
    scale = np.abs(x).max()
    step = 2 * scale / (2**bits - 1)
    grid = -scale + step * np.arange(2**bits)
    assert np.all(np.min(np.abs(w[..., None] - grid), axis=-1) < 1e-5)  # every value is a grid point
    assert np.all(np.abs(w - x) <= step + 1e-5)  # within one level
    # Unbiased: the mean over draws is within a few standard errors of the input.
    lower = np.floor((x + scale) / step)
    frac = (x + scale) / step - lower
    standard_error = step * np.sqrt(frac * (1 - frac)) / math.sqrt(draws)
    exact = standard_error < 1e-9  # entries on the grid are reproduced exactly
    np.testing.assert_allclose(w.mean(0)[exact], x[exact], atol=1e-5)
    z_scores = (w.mean(0) - x)[~exact] / standard_error[~exact]
    assert np.max(np.abs(z_scores)) < 4.5, z_scores
    if bits == 1:
        assert set(np.round(np.unique(w), 5)) == {-2.0, 2.0}


def test_sign_compression_matches_numpy():
    update = tied_update(2)
    scaled = apply(sign_compression(), update)
    unscaled = apply(sign_compression(scaled=False), update)
    for name, value in update.items():
        value = np.asarray(value)
        signs = np.where(value >= 0, 1.0, -1.0)
        np.testing.assert_array_equal(np.asarray(unscaled[name]), signs)
        np.testing.assert_allclose(np.asarray(scaled[name]), signs * np.abs(value).mean(), rtol=1e-6)


def test_random_transforms_reproduce_with_the_same_key_and_advance():
    update = tied_update(3)
    for plan in (CompressionPlan(kind="random_sparsification", keep_probability=0.5),
                 CompressionPlan(kind="quantization", bits=3)):
        transform = plan.transform(jax.random.key(7))
        step = jax.jit(transform.update)
        first, state = step(update, transform.init(update))
        again, _ = step(update, plan.transform(jax.random.key(7)).init(update))
        second, _ = step(update, state)
        np.testing.assert_array_equal(flat(first), flat(again))
        assert not np.array_equal(flat(first), flat(second))


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="top_k", keep_fraction=0.0), "keep_fraction"),
    (dict(kind="top_k", keep_fraction=1.5), "keep_fraction"),
    (dict(kind="top_k"), "keep_fraction"),
    (dict(kind="top_k", keep_fraction=0.1, scope="layer"), "scope"),
    (dict(kind="random_sparsification", keep_probability=-0.2), "keep_probability"),
    (dict(kind="random_sparsification", keep_probability=0.5, bits=4), "bits"),
    (dict(kind="quantization", bits=0), "bits"),
    (dict(kind="quantization", bits=17), "bits"),
    (dict(kind="quantization", bits=2.5), "bits"),
    (dict(kind="quantization", bits=True), "bits"),
    (dict(kind="sign", scaled="yes"), "scaled"),
    (dict(kind="zip"), "kind"),
])
def test_bad_arguments_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CompressionPlan(**kwargs)


def test_factories_validate_too():
    with pytest.raises(ValueError, match="keep_fraction"):
        top_k_sparsification(0.0)
    with pytest.raises(ValueError, match="keep_probability"):
        random_sparsification(2.0, jax.random.key(0))
    with pytest.raises(ValueError, match="bits"):
        stochastic_quantization(0, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        CompressionPlan(kind="quantization", bits=2).transform()


def test_compressed_bytes_by_hand():
    # 1000 + 24 float32 entries: 4096 bytes dense.
    params = {"kernel": jnp.zeros((100, 10)), "bias": jnp.zeros((24,))}
    assert dense_bytes(params) == 4096
    # top-k 1 %: ceil(10) + ceil(0.24) = 10 + 1 entries, 8 bytes each (value + int32 index).
    assert CompressionPlan(kind="top_k", keep_fraction=0.01).compressed_bytes(params) == 88
    # global: ceil(10.24) = 11 entries.
    assert CompressionPlan(kind="top_k", keep_fraction=0.01, scope="global").compressed_bytes(params) == 88
    assert CompressionPlan(kind="top_k", keep_fraction=0.1, scope="global").compressed_bytes(params) == 103 * 8
    # random sparsification: expected 0.25 * 1024 entries.
    assert CompressionPlan(kind="random_sparsification", keep_probability=0.25).compressed_bytes(params) == 256 * 8
    # 4-bit quantization: 500 + 12 bytes of indices and one float32 scale per tensor.
    assert CompressionPlan(kind="quantization", bits=4).compressed_bytes(params) == 500 + 12 + 8
    # 3 bits: ceil(3000 / 8) + ceil(72 / 8) + 8.
    assert CompressionPlan(kind="quantization", bits=3).compressed_bytes(params) == 375 + 9 + 8
    assert CompressionPlan(kind="sign").compressed_bytes(params) == 125 + 3 + 8
    assert CompressionPlan(kind="sign", scaled=False).compressed_bytes(params) == 128


def test_top_k_pruning_lowers_the_cosine_an_attacker_can_match():
    # A FedSGD gradient of a small MLP on one batch. The best an inversion attack can do is
    # to find the true batch, whose gradient g matches the observed pruned gradient with
    # cosine ||top_k(g)|| / ||g||: pruning caps how well the true data can be matched.
    model = mlp((8, 8, 1), 4, hidden_sizes=(32,))
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
    batch = {"x": x, "y": jnp.arange(8) % 4}
    params = model.init(jax.random.key(1), x)
    gradient_of = jax.jit(jax.grad(lambda p, b: jnp.mean(model.per_example_loss(p, b))))
    gradient = gradient_of(params, batch)
    other = {"x": jax.random.normal(jax.random.key(2), x.shape), "y": batch["y"]}
    other_gradient = flat(gradient_of(params, other))
    g = flat(gradient)

    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    true_match, wrong_match = {}, {}
    for pruned_fraction in (0.0, 0.9, 0.99):
        transform = top_k_sparsification(1 - pruned_fraction, scope="global")  # eager: one call each
        observed = flat(transform.update(gradient, transform.init(gradient))[0])
        k = kept_count(1 - pruned_fraction, g.size)
        oracle = top_k_oracle(g, k)
        np.testing.assert_allclose(observed, oracle, rtol=1e-6)
        true_match[pruned_fraction] = cosine(g, observed)
        assert true_match[pruned_fraction] == pytest.approx(np.linalg.norm(oracle) / np.linalg.norm(g), rel=1e-5)
        wrong_match[pruned_fraction] = cosine(other_gradient, observed)
    assert true_match[0.0] == pytest.approx(1.0, abs=1e-6)
    assert true_match[0.0] > true_match[0.9] > true_match[0.99]
    assert true_match[0.99] < 0.9
    # The margin by which the true batch beats a wrong one shrinks as pruning grows.
    margins = [true_match[f] - wrong_match[f] for f in (0.0, 0.9, 0.99)]
    assert margins[0] > margins[2]
