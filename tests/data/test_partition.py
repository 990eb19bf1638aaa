"""Partitioning into hospitals: disjoint cover, skew that follows alpha, scanner shift."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import (
    PartitionConfig,
    ScannerProfile,
    apply_scanner_profile,
    partition_by_site,
    partition_cohort,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
)

LABELS = np.repeat(np.arange(4), 150).astype(np.int32)  # 600 records, 4 balanced classes


def _assert_disjoint_cover(parts, num_records):
    everything = np.concatenate(parts)
    assert everything.size == num_records
    np.testing.assert_array_equal(np.sort(everything), np.arange(num_records))


def _mean_label_entropy(parts, labels):
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=4) / part.size
        entropies.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    return float(np.mean(entropies))


def _all_schemes(generator):
    return {
        "iid": partition_iid(600, 8, generator),
        "dirichlet": partition_dirichlet(LABELS, 8, 0.3, generator),
        "quantity_skew": partition_quantity_skew(600, 8, 0.3, generator),
        "by_site": partition_by_site(LABELS, 8, 0.3, generator),
    }


def test_every_scheme_is_a_disjoint_cover():
    for name, parts in _all_schemes(np.random.default_rng(0)).items():
        assert len(parts) == 8, name
        _assert_disjoint_cover(parts, 600)


def test_every_scheme_is_deterministic():
    first = _all_schemes(np.random.default_rng(1))
    second = _all_schemes(np.random.default_rng(1))
    for name in first:
        for a, b in zip(first[name], second[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_iid_sizes_differ_by_at_most_one():
    sizes = [p.size for p in partition_iid(103, 10, np.random.default_rng(0))]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103


@pytest.mark.parametrize("partitioner", [partition_dirichlet, partition_by_site])
def test_small_alpha_skews_labels_more_than_large_alpha(partitioner):
    generator = np.random.default_rng(2)

    def entropy(alpha):
        draws = [partitioner(LABELS, 6, alpha, generator) for _ in range(5)]
        return np.mean([_mean_label_entropy(parts, LABELS) for parts in draws])

    skewed, mild = entropy(0.1), entropy(100.0)
    # Balanced classes have entropy log 4 = 1.386; alpha = 100 stays close to it.
    assert mild > 1.3
    assert skewed < mild - 0.4


def test_quantity_skew_sizes_follow_alpha():
    generator = np.random.default_rng(3)

    def spread(alpha):
        draws = [partition_quantity_skew(600, 10, alpha, generator) for _ in range(5)]
        sizes = [np.array([p.size for p in parts]) for parts in draws]
        return np.mean([s.std() / s.mean() for s in sizes])

    assert spread(0.3) > 0.8
    # alpha = 1000: only multinomial noise, CV about 0.12 for 60 records per client.
    assert spread(1000.0) < 0.25


def test_min_records_is_respected():
    for parts in (
        partition_dirichlet(LABELS, 10, 0.2, np.random.default_rng(4), min_records=20),
        partition_quantity_skew(600, 10, 0.1, np.random.default_rng(4), min_records=20),
        partition_by_site(LABELS, 10, 0.2, np.random.default_rng(4), min_records=20),
    ):
        assert min(p.size for p in parts) >= 20
        _assert_disjoint_cover(parts, 600)


def test_impossible_min_records_fails_with_a_clear_error():
    with pytest.raises(ValueError, match="alpha"):
        partition_dirichlet(LABELS, 50, 0.001, np.random.default_rng(0), min_records=5)


def test_more_clients_than_records_names_num_clients():
    with pytest.raises(ValueError, match="num_clients"):
        partition_iid(5, 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clients"):
        partition_dirichlet(LABELS[:5], 6, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_records"):
        partition_quantity_skew(10, 5, 1.0, np.random.default_rng(0), min_records=3)


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(scheme="random"), "scheme"),
        (dict(num_clients=0), "num_clients"),
        (dict(num_clients=True), "num_clients"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=float("inf")), "alpha"),
        (dict(min_records=0), "min_records"),
    ],
)
def test_partition_config_validates(fields, field):
    args = dict(scheme="iid", num_clients=4)
    args.update(fields)
    with pytest.raises(ValueError, match=field):
        PartitionConfig(**args)


def test_partition_cohort_dispatches_and_only_by_site_shifts(phantoms32):
    for scheme in ("iid", "dirichlet", "quantity_skew"):
        config = PartitionConfig(scheme=scheme, num_clients=5, alpha=0.5)
        parts, cohort = partition_cohort(phantoms32, config, np.random.default_rng(0))
        _assert_disjoint_cover(parts, 400)
        assert cohort is phantoms32
    parts, shifted = partition_cohort(
        phantoms32, PartitionConfig(scheme="by_site", num_clients=5), np.random.default_rng(0)
    )
    _assert_disjoint_cover(parts, 400)
    np.testing.assert_array_equal(shifted.labels, phantoms32.labels)
    assert 0.0 <= shifted.images.min() and shifted.images.max() <= 1.0
    # Each site's images moved, by a site-specific amount: the per-site mean change in
    # the body differs across sites far more than within a site.
    change = (shifted.images - phantoms32.images)[..., 0]
    body = phantoms32.images[..., 0] > 0.2
    per_record = np.array([change[i][body[i]].mean() for i in range(400)])
    site_means = np.array([per_record[p].mean() for p in parts])
    within = np.mean([per_record[p].std() for p in parts])
    assert np.abs(per_record).mean() > 0.005
    assert site_means.std() > 2 * within


def test_partition_cohort_rejects_more_clients_than_records(phantoms32):
    small = phantoms32.subset(np.arange(3))
    with pytest.raises(ValueError, match="num_clients"):
        config = PartitionConfig(scheme="iid", num_clients=4)
        partition_cohort(small, config, np.random.default_rng(0))


def _scan(images, gain=1.0, offset=0.0, blur_sigma=0.0, noise_std=0.0):
    profile = ScannerProfile(gain=gain, offset=offset, blur_sigma=blur_sigma, noise_std=noise_std)
    return apply_scanner_profile(images, profile, np.random.default_rng(0))


def test_scanner_profile_closed_form_and_validation():
    images = np.full((2, 8, 8, 1), 0.5, np.float32)
    np.testing.assert_allclose(_scan(images, gain=1.2, offset=-0.1), 0.5, atol=1e-6)
    np.testing.assert_allclose(_scan(images, gain=3.0), 1.0)  # clipped
    noisy = _scan(images, noise_std=0.05)
    assert abs(noisy.std() - 0.05) < 0.01 and abs(noisy.mean() - 0.5) < 0.02
    edge = np.zeros((1, 16, 16, 1), np.float32)
    edge[:, :, 8:] = 1.0
    blurred = _scan(edge, blur_sigma=1.0)
    assert 0.1 < blurred[0, 0, 7, 0] < 0.5 < blurred[0, 0, 8, 0] < 0.9
    with pytest.raises(ValueError, match="gain"):
        ScannerProfile(gain=0.0, offset=0.0, blur_sigma=0.0, noise_std=0.0)
    with pytest.raises(ValueError, match="blur_sigma"):
        ScannerProfile(gain=1.0, offset=0.0, blur_sigma=-1.0, noise_std=0.0)
