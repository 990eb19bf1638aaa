"""Procedural CT phantoms: determinism, shapes, anatomy and learnable lesion labels."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import LESION_CLASS_NAMES, make_phantom_cohort, split_train_test
from fedpriv.data.imaging import hounsfield_to_unit

from .helpers import nearest_centroid_accuracy


def test_same_rng_same_cohort_bit_for_bit():
    first = make_phantom_cohort(50, 32, np.random.default_rng(3))
    second = make_phantom_cohort(50, 32, np.random.default_rng(3))
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_different_rng_different_cohort():
    first = make_phantom_cohort(50, 32, np.random.default_rng(3))
    second = make_phantom_cohort(50, 32, np.random.default_rng(4))
    assert np.abs(first.images - second.images).mean() > 0.01


def test_more_than_one_chunk_is_deterministic_and_varied():
    # 300 > the 256-patient chunk: the second chunk must continue the stream, not repeat it.
    cohort = make_phantom_cohort(300, 16, np.random.default_rng(0))
    again = make_phantom_cohort(300, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(cohort.images, again.images)
    assert not np.array_equal(cohort.images[:44], cohort.images[256:])


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_dtype_and_range(size):
    cohort = make_phantom_cohort(20, size, np.random.default_rng(0))
    assert cohort.images.shape == (20, size, size, 1)
    assert cohort.images.dtype == np.float32
    assert cohort.labels.dtype == np.int32
    assert cohort.images.min() >= 0.0 and cohort.images.max() <= 1.0
    assert cohort.class_names == LESION_CLASS_NAMES[:4]


def test_classes_balanced_and_all_present(phantoms32):
    assert np.bincount(phantoms32.labels, minlength=4).tolist() == [100, 100, 100, 100]
    five = make_phantom_cohort(10, 32, np.random.default_rng(0), num_classes=5)
    assert sorted(set(five.labels.tolist())) == [0, 1, 2, 3, 4]


def test_anatomy_air_outside_body_and_bone_inside(phantoms32):
    images = phantoms32.images[..., 0]
    # Corners are air (window floor) up to mild noise.
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() < 0.05
    # Every patient has saturated-bright pixels (vertebra) and dark lung inside the body.
    assert (images.max(axis=(1, 2)) > 0.95).all()
    centre_band = images[:, 8:24, 4:28]
    assert ((centre_band < 0.1).mean(axis=(1, 2)) > 0.05).all()


def test_patients_differ_in_anatomy(phantoms32):
    # Body size varies: the number of non-air pixels spreads over patients.
    body_area = (phantoms32.images[..., 0] > 0.1).sum(axis=(1, 2))
    assert body_area.std() > 10


def test_lesion_types_are_learnable(phantoms32):
    train, test = split_train_test(phantoms32, 0.3, np.random.default_rng(0))
    # Chance is 0.25; measured about 0.8 with this simple classifier.
    assert nearest_centroid_accuracy(train, test) > 0.6


def test_lesion_classes_shift_intensity_as_described(phantoms32):
    images, labels = phantoms32.images[..., 0], phantoms32.labels
    liver_grey = float(hounsfield_to_unit(np.array(95.0)))
    bright = (images > 0.95).sum(axis=(1, 2))
    dark = ((images > 0.15) & (images < liver_grey - 0.1)).sum(axis=(1, 2))
    hyper = ((images > liver_grey + 0.08) & (images < 0.95)).sum(axis=(1, 2))
    normal = labels == 0
    # Cysts add fluid-dark pixels, masses enhancing pixels, calcifications saturated ones.
    assert dark[labels == 1].mean() > dark[normal].mean() + 5
    assert hyper[labels == 2].mean() > hyper[normal].mean() + 5
    assert bright[labels == 3].mean() > bright[normal].mean() + 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_records=0), "num_records"),
        (dict(image_size=15), "image_size"),
        (dict(image_size=32.0), "image_size"),
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=6), "num_classes"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    args = dict(num_records=4, image_size=32, generator=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        make_phantom_cohort(**args)


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="generator"):
        make_phantom_cohort(4, 32, 0)
