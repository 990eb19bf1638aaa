"""Gaussian noise transform: KS test at the right scale, independence, reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv import defenses

STDDEV = 0.7
# 20 000 coordinates over two leaves of different shapes.
ZEROS = {"kernel": jnp.zeros((100, 100)), "bias": jnp.zeros((10_000,))}


def draw(key, stddev=STDDEV, updates=ZEROS):
    transform = defenses.add_gaussian_noise(stddev, key)
    noised, state = transform.update(updates, transform.init(updates))
    return noised, state


def flat(tree):
    return np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def test_noise_passes_ks_at_the_right_scale_and_fails_at_wrong_ones():
    # DESIGN §6: "the noise passes a KS test at the right scale and fails at the wrong one".
    # With n = 20 000, a 1.5x scale error gives a KS statistic of ~0.1, p ~ 1e-170.
    samples = flat(draw(jax.random.key(0))[0])
    assert samples.size == 20_000
    assert stats.kstest(samples / STDDEV, "norm").pvalue > 0.01
    assert stats.kstest(samples / (STDDEV * 2 / 3), "norm").pvalue < 1e-6
    assert stats.kstest(samples / (STDDEV * 3 / 2), "norm").pvalue < 1e-6


def test_noise_is_added_to_the_updates():
    updates = {"kernel": jnp.full((100, 100), 3.0), "bias": jnp.arange(10_000.0)}
    noised, _ = draw(jax.random.key(1), updates=updates)
    zero_noise, _ = draw(jax.random.key(1))
    jax.tree_util.tree_map(lambda n, u, z: np.testing.assert_allclose(n, u + z, rtol=1e-6, atol=1e-4),
                           noised, updates, zero_noise)


def test_zero_stddev_returns_updates_exactly():
    updates = {"kernel": jnp.full((3, 3), 2.5), "bias": jnp.arange(4.0)}
    noised, _ = draw(jax.random.key(2), stddev=0.0, updates=updates)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), noised, updates)


def test_same_key_is_bit_identical_and_leaves_are_independent():
    first, first_state = draw(jax.random.key(3))
    second, second_state = draw(jax.random.key(3))
    np.testing.assert_array_equal(flat(first), flat(second))
    np.testing.assert_array_equal(jax.random.key_data(first_state.key), jax.random.key_data(second_state.key))
    kernel, bias = np.asarray(first["kernel"]).ravel(), np.asarray(first["bias"])
    assert abs(np.corrcoef(kernel, bias)[0, 1]) < 0.05  # |r| ~ 0.007 expected for n = 10 000
    assert not np.array_equal(kernel, bias)


def test_consecutive_updates_differ():
    transform = defenses.add_gaussian_noise(STDDEV, jax.random.key(4))
    state = transform.init(ZEROS)
    first, state = transform.update(ZEROS, state)
    second, state = transform.update(ZEROS, state)
    assert abs(np.corrcoef(flat(first), flat(second))[0, 1]) < 0.05
    assert stats.kstest(flat(second) / STDDEV, "norm").pvalue > 0.01


def test_vmapped_factory_over_split_keys_gives_distinct_client_noise():
    num_clients = 4
    keys = jax.random.split(jax.random.key(5), num_clients)
    client_zeros = jax.tree_util.tree_map(lambda leaf: jnp.zeros((num_clients, *leaf.shape)), ZEROS)
    states = jax.vmap(lambda key: defenses.add_gaussian_noise(STDDEV, key).init(ZEROS))(keys)
    transform = defenses.add_gaussian_noise(STDDEV, keys[0])  # update reads only the state's key
    noised, _ = jax.jit(jax.vmap(transform.update))(client_zeros, states)
    per_client = np.stack([flat(jax.tree_util.tree_map(lambda leaf: leaf[c], noised)) for c in range(num_clients)])
    correlations = np.corrcoef(per_client)
    assert np.all(np.abs(correlations[~np.eye(num_clients, dtype=bool)]) < 0.05)
    for c in range(num_clients):
        assert stats.kstest(per_client[c] / STDDEV, "norm").pvalue > 0.01
    # Client c's noise is exactly what the unbatched transform with key c draws.
    # (to float32 rounding: jit fuses the normal sampler differently from eager mode)
    np.testing.assert_allclose(per_client[2], flat(draw(keys[2])[0]), rtol=1e-6, atol=1e-6)


def test_vmapping_init_with_one_key_gives_every_client_the_same_noise():
    # The pitfall documented in DESIGN §4 and in fedpriv/defenses/noise.py.
    num_clients = 3
    client_zeros = jax.tree_util.tree_map(lambda leaf: jnp.zeros((num_clients, *leaf.shape)), ZEROS)
    transform = defenses.add_gaussian_noise(STDDEV, jax.random.key(6))
    states = jax.vmap(transform.init)(client_zeros)
    noised, _ = jax.vmap(transform.update)(client_zeros, states)
    np.testing.assert_array_equal(np.asarray(noised["bias"][0]), np.asarray(noised["bias"][1]))


def test_raw_uint32_keys_work_too():
    noised, _ = draw(jax.random.PRNGKey(7))
    assert stats.kstest(flat(noised) / STDDEV, "norm").pvalue > 0.01


@pytest.mark.parametrize("stddev", [-1.0, float("nan"), float("inf")])
def test_bad_stddev_is_rejected(stddev):
    with pytest.raises(ValueError, match="stddev"):
        defenses.add_gaussian_noise(stddev, jax.random.key(0))
