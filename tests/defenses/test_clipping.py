"""Per-example clipping against an explicit per-example loop (DESIGN §6 oracle)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv import defenses

BATCH = 7
SHAPES = {"dense_1": {"kernel": (5, 4), "bias": (4,)}, "dense_2": {"kernel": (4, 3), "bias": (3,)}}


def random_per_example_grads(seed: int = 0):
    """Per-example grads of an MLP-shaped pytree with norms spread around the clip norm."""
    rng = np.random.default_rng(seed)
    scales = np.array([0.1, 0.5, 1.0, 3.0, 10.0, 0.0, 2.0])  # one exact zero gradient
    grads = jax.tree_util.tree_map(
        lambda shape: (rng.normal(size=(BATCH, *shape)) * scales.reshape(-1, *([1] * len(shape)))).astype(
            np.float32), SHAPES, is_leaf=lambda s: isinstance(s, tuple))
    return grads


def loop_clipped_sum(grads, mask, clip):
    """The oracle: clip every real example by its own global norm, in float64, and add up."""
    total = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape[1:], np.float64), grads)
    num_clipped = 0
    for b in range(BATCH):
        if mask[b] == 0:
            continue
        example = [np.asarray(leaf[b], np.float64) for leaf in jax.tree_util.tree_leaves(grads)]
        norm = np.sqrt(sum(np.sum(part ** 2) for part in example))
        scale = 1.0 if norm <= clip else clip / norm
        num_clipped += norm > clip
        total = jax.tree_util.tree_map(lambda acc, leaf: acc + scale * np.asarray(leaf[b], np.float64), total, grads)
    return total, num_clipped / max(sum(m != 0 for m in mask), 1)


@pytest.mark.parametrize("clip", [0.5, 2.0, 100.0])
def test_clipped_sum_equals_per_example_loop(clip):
    grads = random_per_example_grads()
    mask = np.ones(BATCH, np.float32)
    total, fraction = defenses.clipped_sum(grads, mask, clip)
    expected, expected_fraction = loop_clipped_sum(grads, mask, clip)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6), total, expected)
    assert float(fraction) == pytest.approx(expected_fraction)
    if clip == 100.0:  # nothing clipped: the plain sum
        jax.tree_util.tree_map(lambda a, g: np.testing.assert_allclose(a, np.sum(g, 0), rtol=1e-6), total, grads)
        assert float(fraction) == 0.0


def test_every_clipped_example_has_norm_at_most_clip():
    grads = random_per_example_grads(1)
    clipped = defenses.clip_per_example(grads, 1.0)
    norms = np.asarray(defenses.per_example_global_norms(clipped))
    original = np.asarray(defenses.per_example_global_norms(grads))
    assert np.all(norms <= 1.0 + 1e-6)
    np.testing.assert_allclose(norms, np.minimum(original, 1.0), rtol=1e-6)
    assert norms[5] == 0.0  # the zero gradient stays zero (no 0/0)


def test_masked_examples_contribute_exactly_zero():
    grads = random_per_example_grads(2)
    mask = np.array([1, 0, 1, 1, 0, 1, 0], np.float32)
    # Poison the padding: NaN and huge values must not leak into the sum.
    poisoned = jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(leaf).at[1].set(jnp.nan).at[4].set(1e30).at[6].set(-jnp.inf), grads)
    total, fraction = defenses.clipped_sum(poisoned, mask, 1.0)
    # Bit-for-bit the sum with the padding rows zeroed (same positions, so the same summation
    # order; a zero gradient clips to exactly zero): padding adds exactly 0.
    keep = mask.astype(bool)
    zeroed = jax.tree_util.tree_map(lambda leaf: np.where(keep.reshape(-1, *[1] * (leaf.ndim - 1)), leaf, 0), grads)
    expected, _ = defenses.clipped_sum(zeroed, np.ones(BATCH), 1.0)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), total, expected)
    # And, to rounding, the sum over the real examples alone.
    real = np.flatnonzero(mask)
    only_real, _ = defenses.clipped_sum(jax.tree_util.tree_map(lambda leaf: leaf[real], grads), np.ones(len(real)), 1.0)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), total, only_real)
    _, expected_fraction = loop_clipped_sum(grads, mask, 1.0)
    assert float(fraction) == pytest.approx(expected_fraction)
    # All padding: exactly zero and no division by zero.
    empty_total, empty_fraction = defenses.clipped_sum(poisoned, np.zeros(BATCH), 1.0)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree_util.tree_leaves(empty_total))
    assert float(empty_fraction) == 0.0


def test_clipping_is_differentiable_at_zero():
    # Attacks differentiate through the client function, clipping included.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, random_per_example_grads())
    gradient = jax.jit(jax.grad(lambda g: sum(jnp.sum(leaf) for leaf in
                                              jax.tree_util.tree_leaves(defenses.clip_per_example(g, 1.0)))))(zeros)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(gradient))


def test_clipping_under_jit_matches_eager():
    grads = random_per_example_grads(3)
    mask = np.array([1, 1, 0, 1, 1, 1, 1], np.float32)
    eager, _ = defenses.clipped_sum(grads, mask, 1.5)
    jitted, _ = jax.jit(defenses.clipped_sum, static_argnums=2)(grads, mask, 1.5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), eager, jitted)


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan")])
def test_bad_clip_norm_is_rejected(clip):
    with pytest.raises(ValueError, match="l2_clip_norm"):
        defenses.clipped_sum(random_per_example_grads(), np.ones(BATCH), clip)


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match="example_mask"):
        defenses.clipped_sum(random_per_example_grads(), np.ones(BATCH + 1), 1.0)


def mlp_per_example_loss(params, batch):
    """A Model.per_example_loss-shaped loss (fedpriv/typing.py): [B] softmax cross-entropy."""
    hidden = jnp.tanh(batch["x"] @ params["dense_1"]["kernel"] + params["dense_1"]["bias"])
    logits = hidden @ params["dense_2"]["kernel"] + params["dense_2"]["bias"]
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, batch["y"][:, None], axis=1)[:, 0]


def test_per_example_gradients_equal_a_loop_of_single_example_grads():
    rng = np.random.default_rng(4)
    params = jax.tree_util.tree_map(lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32), SHAPES,
                                    is_leaf=lambda s: isinstance(s, tuple))
    batch = {"x": jnp.asarray(rng.normal(size=(BATCH, 5)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 3, size=BATCH), jnp.int32)}
    per_example = defenses.per_example_gradients(mlp_per_example_loss, params, batch)
    single_example_grad = jax.jit(jax.grad(lambda p, one: mlp_per_example_loss(p, one)[0]))
    for b in range(BATCH):
        one = {key: value[b:b + 1] for key, value in batch.items()}
        expected = single_example_grad(params, one)
        jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a[b], e, rtol=1e-5, atol=1e-6),
                               per_example, expected)
    # Their mean is the gradient of the mean loss.
    mean_grad = jax.grad(lambda p: jnp.mean(mlp_per_example_loss(p, batch)))(params)
    jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(np.mean(a, 0), e, rtol=1e-5, atol=1e-6),
                           per_example, mean_grad)


def test_per_example_gradients_refuse_batch_losses():
    params = {"w": jnp.ones(2)}
    batch = {"x": jnp.ones((3, 2)), "y": jnp.zeros(3)}
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        defenses.per_example_gradients(lambda p, b: jnp.stack([b["x"] @ p["w"]] * 2), params, batch)
