"""Round data: padding invariants, record placement and the three sampling schemes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedpriv.data import build_round_data

NUM_RECORDS = 60
IMAGES = np.random.default_rng(0).random((NUM_RECORDS, 4, 4, 1), dtype=np.float32)
LABELS = (np.arange(NUM_RECORDS) % 3).astype(np.int32)
# Uneven clients: 7, 13, 25 and 15 records.
PARTITION = [np.arange(0, 7), np.arange(7, 20), np.arange(20, 45), np.arange(45, 60)]


def _build(**kwargs):
    args = dict(local_steps=1, sampling="full", generator=np.random.default_rng(0))
    args.update(kwargs)
    return build_round_data(IMAGES, LABELS, PARTITION, **args)


def _host(data):
    return jax.tree_util.tree_map(np.asarray, data)


def _assert_padding_invariants(data):
    data = _host(data)
    mask, ids = data.example_mask, data.record_ids
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask == 0, ids == -1)
    assert (data.examples["x"][mask == 0] == 0).all()
    assert (data.examples["y"][mask == 0] == 0).all()
    real = mask == 1
    np.testing.assert_array_equal(data.examples["x"][real], IMAGES[ids[real]])
    np.testing.assert_array_equal(data.examples["y"][real], LABELS[ids[real]])


def _assert_ids_belong_to_their_client(data):
    ids = np.asarray(data.record_ids)
    for client, part in enumerate(PARTITION):
        used = ids[client][ids[client] >= 0]
        assert np.isin(used, part).all()


def test_full_batch_shapes_dtypes_and_content():
    data = _build()
    assert isinstance(data.example_mask, jax.Array)
    assert data.examples["x"].shape == (4, 1, 25, 4, 4, 1)
    assert data.examples["x"].dtype == np.float32
    assert data.examples["y"].dtype == np.int32 and data.record_ids.dtype == np.int32
    assert data.example_mask.dtype == np.float32 and data.client_mask.dtype == np.float32
    _assert_padding_invariants(data)
    ids = np.asarray(data.record_ids)
    for client, part in enumerate(PARTITION):
        # The whole client data, each record once, padding after it.
        np.testing.assert_array_equal(np.sort(ids[client, 0, : part.size]), part)
        assert (ids[client, 0, part.size :] == -1).all()
    np.testing.assert_array_equal(np.asarray(data.client_mask), 1.0)


def test_full_batch_order_is_random_and_capacity_can_be_fixed():
    ids = np.asarray(_build().record_ids)
    assert not np.array_equal(ids[2, 0, :25], PARTITION[2])
    assert _build(batch_size=32).batch_size == 32
    with pytest.raises(ValueError, match="batch_size"):
        _build(batch_size=24)
    with pytest.raises(ValueError, match="local_steps"):
        _build(local_steps=2)


def test_shuffle_covers_each_record_once_per_epoch():
    data = _build(sampling="shuffle", local_steps=9, batch_size=5)
    assert data.examples["x"].shape == (4, 9, 5, 4, 4, 1)
    assert float(np.asarray(data.example_mask).min()) == 1.0  # no padding at all
    _assert_padding_invariants(data)
    _assert_ids_belong_to_their_client(data)
    ids = np.asarray(data.record_ids)
    for client, part in enumerate(PARTITION):
        stream = ids[client].ravel()
        full_epochs = stream.size // part.size
        for epoch in range(full_epochs):
            chunk = stream[epoch * part.size : (epoch + 1) * part.size]
            np.testing.assert_array_equal(np.sort(chunk), part)
        # The partial last epoch repeats nobody either.
        tail = stream[full_epochs * part.size :]
        assert np.unique(tail).size == tail.size
        # No batch holds a record twice, also where a batch straddles two epochs.
        for batch in ids[client]:
            assert np.unique(batch).size == batch.size
        # Reshuffled between epochs.
        if full_epochs >= 2:
            assert not np.array_equal(stream[: part.size], stream[part.size : 2 * part.size])


def test_shuffle_batch_larger_than_a_client_names_batch_size_and_client():
    with pytest.raises(ValueError, match=r"batch_size=8 .*client 0.* 7 records"):
        _build(sampling="shuffle", local_steps=2, batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        _build(sampling="shuffle", local_steps=2)


def test_poisson_mask_rate_matches_sampling_rate():
    rate = 0.3
    data = _build(sampling="poisson", local_steps=60, sampling_rate=rate)
    assert data.examples["x"].shape == (4, 60, 25, 4, 4, 1)
    _assert_padding_invariants(data)
    _assert_ids_belong_to_their_client(data)
    mask = np.asarray(data.example_mask)
    sizes = np.array([p.size for p in PARTITION])
    # 60 steps x 60 records = 3600 Bernoulli(0.3) draws: std of the rate 0.0076.
    observed = mask.sum() / (60 * sizes.sum())
    assert abs(observed - rate) < 0.03
    ids = np.asarray(data.record_ids)
    for client, size in enumerate(sizes):
        # Sampled records are packed to the front; every record is sampled in some step.
        assert mask[client, :, size:].sum() == 0
        counts = mask[client].sum(axis=1).astype(int)
        assert all(mask[client, step, :count].all() for step, count in enumerate(counts))
        assert set(ids[client][ids[client] >= 0].tolist()) == set(PARTITION[client].tolist())
    # Batch sizes vary from step to step (no truncation to a fixed size).
    assert np.unique(mask[2].sum(axis=1)).size > 3


def test_poisson_rate_one_uses_every_record_every_step():
    data = _build(sampling="poisson", local_steps=3, sampling_rate=1.0)
    sizes = [p.size for p in PARTITION]
    per_step = np.asarray(data.example_mask).sum(axis=2)
    np.testing.assert_array_equal(per_step, np.array(sizes)[:, None].repeat(3, 1))


@pytest.mark.parametrize("rate", [None, 0.0, 1.5, -0.1, True])
def test_poisson_requires_rate_in_half_open_unit_interval(rate):
    with pytest.raises(ValueError, match="sampling_rate"):
        _build(sampling="poisson", local_steps=2, sampling_rate=rate)


def test_sampling_rate_is_refused_without_poisson():
    with pytest.raises(ValueError, match="sampling_rate"):
        _build(sampling_rate=0.5)


@pytest.mark.parametrize("sampling", ["full", "shuffle", "poisson"])
def test_non_participating_clients_are_all_padding(sampling):
    participating = np.array([True, False, True, False])
    kwargs = dict(sampling=sampling, participating=participating)
    if sampling == "shuffle":
        kwargs.update(local_steps=3, batch_size=4)
    if sampling == "poisson":
        kwargs.update(local_steps=3, sampling_rate=0.5)
    data = _build(**kwargs)
    _assert_padding_invariants(data)
    np.testing.assert_array_equal(np.asarray(data.client_mask), [1.0, 0.0, 1.0, 0.0])
    mask = np.asarray(data.example_mask)
    assert mask[[1, 3]].sum() == 0 and mask[[0, 2]].sum() > 0
    # Participants get the same batches as when everyone takes part.
    everyone = _build(**{**kwargs, "participating": None})
    np.testing.assert_array_equal(
        np.asarray(data.record_ids)[[0, 2]], np.asarray(everyone.record_ids)[[0, 2]]
    )


@pytest.mark.parametrize("sampling", ["full", "shuffle", "poisson"])
def test_same_rng_same_round_different_rng_different_round(sampling):
    kwargs = dict(sampling=sampling)
    if sampling == "shuffle":
        kwargs.update(local_steps=3, batch_size=4)
    if sampling == "poisson":
        kwargs.update(local_steps=3, sampling_rate=0.5)
    first = _host(_build(generator=np.random.default_rng(9), **kwargs))
    second = _host(_build(generator=np.random.default_rng(9), **kwargs))
    other = _host(_build(generator=np.random.default_rng(10), **kwargs))
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.record_ids, other.record_ids)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(local_steps=0), "local_steps"),
        (dict(sampling="bootstrap"), "sampling"),
        (dict(participating=np.array([1, 0, 1, 1])), "participating"),
        (dict(participating=np.array([True, False])), "participating"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _build(**kwargs)


def test_invalid_partition_and_labels():
    def build(labels=LABELS, partition=PARTITION, generator=np.random.default_rng(0)):
        return build_round_data(IMAGES, labels, partition, local_steps=1, sampling="full", generator=generator)

    with pytest.raises(ValueError, match=r"partition\[1\]"):
        build(partition=[np.arange(3), np.array([5, 60])])  # 60 is out of range
    with pytest.raises(ValueError, match=r"partition\[0\]"):
        build(partition=[np.array([1, 1])])
    with pytest.raises(ValueError, match="labels"):
        build(labels=LABELS[:-1])
    with pytest.raises(TypeError, match="generator"):
        build(generator=42)


def test_poisson_capacity_bounds_the_draw_and_larger_draws_grow_it():
    from fedpriv.data import poisson_capacity
    import scipy.stats
    capacity = poisson_capacity(100, 0.05, overflow_probability=1e-6)
    # Closed form: P(Binomial(100, 0.05) > k) <= 1e-6 at k = capacity, not at capacity - 1.
    assert scipy.stats.binom.sf(capacity, 100, 0.05) <= 1e-6 < scipy.stats.binom.sf(capacity - 1, 100, 0.05)
    # A capacity of 1 with rate 0.5 is exceeded: the round grows instead of truncating.
    data = _build(sampling="poisson", local_steps=20, sampling_rate=0.5, batch_size=1)
    mask = np.asarray(data.example_mask)
    assert mask.shape[-1] == int(mask.sum(axis=-1).max()) > 1
    _assert_padding_invariants(data)
