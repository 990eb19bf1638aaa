"""ImageCohort validation and stratified train/test splitting."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import ImageCohort, split_train_test


def _cohort(num_records=20, num_classes=2, **overrides):
    generator = np.random.default_rng(0)
    fields = dict(
        images=generator.random((num_records, 8, 8, 1), dtype=np.float32),
        labels=(np.arange(num_records) % num_classes).astype(np.int32),
        class_names=tuple(f"c{k}" for k in range(num_classes)),
        name="toy",
    )
    fields.update(overrides)
    return ImageCohort(**fields)


def test_valid_cohort_properties():
    cohort = _cohort(num_records=12, num_classes=3)
    assert cohort.num_records == 12
    assert cohort.num_classes == 3
    assert cohort.input_shape == (8, 8, 1)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(images=np.zeros((20, 8, 8), np.float32)), "images"),
        (dict(images=np.zeros((20, 8, 8, 3), np.float32)), "images"),
        (dict(images=np.zeros((20, 8, 8, 1), np.float64)), "images"),
        (dict(images=np.full((20, 8, 8, 1), 1.5, np.float32)), "images"),
        (dict(images=np.full((20, 8, 8, 1), np.nan, np.float32)), "images"),
        (dict(labels=np.zeros(19, np.int32)), "labels"),
        (dict(labels=np.zeros(20, np.int64)), "labels"),
        (dict(labels=np.full(20, 2, np.int32)), "labels"),
        (dict(labels=np.full(20, -1, np.int32)), "labels"),
        (dict(class_names=["c0", "c1"]), "class_names"),
        (dict(class_names=("c0", "c0")), "class_names"),
        (dict(name=""), "name"),
    ],
)
def test_invalid_cohort_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        _cohort(**overrides)


def test_subset_keeps_class_names():
    cohort = _cohort(num_records=10, num_classes=5)
    part = cohort.subset(np.array([3, 1]))
    np.testing.assert_array_equal(part.labels, [3, 1])
    np.testing.assert_array_equal(part.images, cohort.images[[3, 1]])
    assert part.class_names == cohort.class_names


def test_split_is_stratified_disjoint_and_complete():
    labels = np.repeat(np.arange(3), [50, 30, 20]).astype(np.int32)
    cohort = _cohort(num_records=100, num_classes=3, labels=labels)
    train, test = split_train_test(cohort, 0.2, np.random.default_rng(1))
    assert np.bincount(test.labels, minlength=3).tolist() == [10, 6, 4]
    assert np.bincount(train.labels, minlength=3).tolist() == [40, 24, 16]
    # Images are unique random arrays, so they identify records: nothing lost or doubled.
    keys = {img.tobytes() for img in np.concatenate([train.images, test.images])}
    assert len(keys) == 100
    assert (train.name, test.name) == ("toy/train", "toy/test")


def test_split_is_deterministic_for_a_given_rng():
    cohort = _cohort(num_records=40)
    first = split_train_test(cohort, 0.25, np.random.default_rng(7))[1]
    second = split_train_test(cohort, 0.25, np.random.default_rng(7))[1]
    other = split_train_test(cohort, 0.25, np.random.default_rng(8))[1]
    np.testing.assert_array_equal(first.images, second.images)
    assert not np.array_equal(first.images, other.images)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_outside_open_unit_interval(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(_cohort(), fraction, np.random.default_rng(0))


def test_split_rejects_an_empty_half():
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(_cohort(num_records=4), 0.05, np.random.default_rng(0))
