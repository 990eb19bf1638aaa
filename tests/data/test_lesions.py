"""Lesion drawing on a controlled background, one type at a time."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data.lesions import (
    CALCIFICATION,
    CYST,
    FAT,
    MASS,
    NO_LESION,
    draw_lesions,
    lesion_class_names,
    sample_lesion_centers,
)

SIZE = 64
LIVER_HU = 95.0


def _draw(label, count=8, radius=5.0, seed=0):
    background = np.full((count, SIZE, SIZE), LIVER_HU, np.float32)
    centers = np.full((count, 2), SIZE / 2.0, np.float32)
    radii = np.full(count, radius, np.float32)
    labels = np.full(count, label)
    return draw_lesions(background, labels, centers, radii, np.random.default_rng(seed))


def _disk(radius):
    rows, cols = np.indices((SIZE, SIZE))
    return np.hypot(rows - SIZE / 2.0, cols - SIZE / 2.0) <= radius


def test_no_lesion_leaves_the_image_unchanged():
    np.testing.assert_array_equal(_draw(NO_LESION), LIVER_HU)


def test_cyst_is_dark_homogeneous_and_round():
    out = _draw(CYST)
    core = out[:, _disk(3.5)]
    assert core.mean() < 25.0 and core.std() < 10.0
    np.testing.assert_allclose(out[:, ~_disk(6.0)], LIVER_HU)


def test_mass_is_bright_and_lobulated():
    out = _draw(MASS)
    assert out[:, _disk(3.0)].mean() > 130.0
    # Lobulation: the lesion's extent along rays varies with angle, unlike a disk.
    inside = out > (LIVER_HU + 160.0) / 2.0
    rows, cols = np.nonzero(inside[0])
    radial = np.hypot(rows - SIZE / 2.0, cols - SIZE / 2.0)
    angles = np.arctan2(rows - SIZE / 2.0, cols - SIZE / 2.0)
    starts = np.linspace(-np.pi, np.pi, 8, endpoint=False)
    sector_extent = [radial[(angles >= a) & (angles < a + np.pi / 4)].max() for a in starts]
    assert max(sector_extent) - min(sector_extent) > 1.0


def test_calcification_is_small_and_bone_bright():
    out = _draw(CALCIFICATION)
    assert (out.max(axis=(1, 2)) > 500.0).all()
    # Punctate: few pixels above 300 HU, far fewer than a 5-pixel-radius disk (~78).
    assert ((out > 300.0).sum(axis=(1, 2)) < 40).all()


def test_fat_is_negative_hu():
    out = _draw(FAT)
    assert out[:, _disk(3.0)].mean() < -60.0


def test_lesion_types_differ_from_each_other():
    means = {label: _draw(label)[:, _disk(3.0)].mean() for label in (CYST, MASS, FAT)}
    assert means[FAT] < means[CYST] < LIVER_HU < means[MASS]


def test_centers_fall_inside_the_site_with_margin():
    mask = np.zeros((50, 32, 32), bool)
    mask[:, 10:22, 5:25] = True
    centers = sample_lesion_centers(mask, 3, np.random.default_rng(0))
    assert (centers[:, 0] >= 12.5).all() and (centers[:, 0] <= 18.5).all()
    assert (centers[:, 1] >= 7.5).all() and (centers[:, 1] <= 21.5).all()
    # Uniform over the allowed region, not stuck in one place.
    assert centers[:, 1].std() > 2.0


def test_centers_fall_back_when_the_site_is_too_small_or_empty():
    mask = np.zeros((2, 16, 16), bool)
    mask[0, 4, 9] = True  # a single pixel, smaller than the margin
    centers = sample_lesion_centers(mask, 3, np.random.default_rng(0))
    assert np.abs(centers[0] - (4, 9)).max() <= 0.5
    np.testing.assert_allclose(centers[1], (7.5, 7.5))


def test_class_names_follow_num_classes():
    assert lesion_class_names(2) == ("no lesion", "hypodense cyst")
    with pytest.raises(ValueError, match="num_classes"):
        lesion_class_names(6)
