"""DP-SGD inside the client function, against an explicit per-example loop."""

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.defenses import DPSGDPlan
from fedpriv.federated import LocalTrainingConfig, for_each_client, make_client_update
from tests.federated.conftest import random_client_data


def _plan(noise_multiplier):
    return DPSGDPlan(l2_clip_norm=0.5, noise_multiplier=noise_multiplier, sampling_rate=0.5, steps=10,
                     expected_batch_size=2.0)


def test_dp_client_step_equals_explicit_per_example_clipping_loop(tiny_conv_model):
    data = random_client_data(np.random.default_rng(0), clients=1, steps=1, batch=4, input_shape=(8, 8, 1),
                              num_classes=3, pad_fraction=0.4)
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])
    plan = _plan(0.0)
    update, _ = make_client_update(tiny_conv_model, LocalTrainingConfig(learning_rate=0.1), plan)(
        params, jax.tree_util.tree_map(lambda a: a[0], data.examples), data.example_mask[0], jax.random.key(1))
    # Oracle: clip each real example's gradient on its own, sum, divide by the expected batch size.
    total = jax.tree_util.tree_map(jnp.zeros_like, params)
    # One example's gradient, compiled once (op-by-op eager conv gradients took ~20 s here).
    example_gradient = jax.jit(jax.grad(lambda p, batch: tiny_conv_model.per_example_loss(p, batch)[0]))
    for index in range(4):
        if data.example_mask[0, 0, index] == 0:
            continue
        batch = {"x": data.examples["x"][0, 0, index:index + 1], "y": data.examples["y"][0, 0, index:index + 1]}
        gradient = example_gradient(params, batch)
        norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree_util.tree_leaves(gradient)))
        scale = min(1.0, 0.5 / norm)
        total = jax.tree_util.tree_map(lambda t, g: t + scale * g, total, gradient)
    for u, t in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(total)):
        np.testing.assert_allclose(u, -0.1 * t / 2.0, rtol=1e-4, atol=1e-7)


def test_vmapped_clients_get_distinct_noise_and_same_key_reproduces(tiny_conv_model):
    data = random_client_data(np.random.default_rng(1), clients=3, steps=2, batch=2, input_shape=(8, 8, 1),
                              num_classes=3)
    # Identical data in every client: any difference between updates is the noise.
    same = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a[:1], a.shape), data)
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])
    run = jax.jit(for_each_client(make_client_update(tiny_conv_model, LocalTrainingConfig(learning_rate=0.1),
                                                     _plan(1.0)), "vmap"))
    keys = jax.random.split(jax.random.key(2), 3)
    updates, _ = run(params, same, keys)
    again, _ = run(params, same, keys)
    kernel = np.asarray(updates["head"]["kernel"])
    assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])
    for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_dp_noise_has_the_plan_scale(tiny_conv_model):
    # With every example masked out, one local step releases only noise / expected batch size,
    # so update = -lr * N(0, (sigma C)^2) / B per coordinate.
    data = random_client_data(np.random.default_rng(2), clients=1, steps=1, batch=2, input_shape=(8, 8, 1),
                              num_classes=3)
    empty = jax.tree_util.tree_map(lambda a: a, data)
    mask = jnp.zeros_like(data.example_mask[0])
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])
    plan = _plan(2.0)
    update, _ = make_client_update(tiny_conv_model, LocalTrainingConfig(learning_rate=0.1), plan)(
        params, jax.tree_util.tree_map(lambda a: a[0], empty.examples), mask, jax.random.key(3))
    values = np.concatenate([np.ravel(u) for u in jax.tree_util.tree_leaves(update)])
    expected_std = 0.1 * plan.noise_stddev / 2.0
    assert values.size > 300
    assert abs(np.std(values) / expected_std - 1) < 0.1
