"""Windowing, resizing and correlated noise."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import hounsfield_to_unit, resize_image
from fedpriv.data.imaging import smooth_noise


def test_soft_tissue_window_closed_form():
    hu = np.array([-1000.0, -160.0, -60.0, 40.0, 140.0, 240.0, 3000.0])
    np.testing.assert_allclose(
        hounsfield_to_unit(hu), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6
    )


def test_custom_window_closed_form():
    # Lung window: centre -600, width 1500 -> [-1350, 150].
    out = hounsfield_to_unit(np.array([-1350.0, -600.0, -225.0, 150.0]), -600.0, 1500.0)
    np.testing.assert_allclose(out, [0.0, 0.5, 0.75, 1.0], atol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize("width", [0.0, -10.0, float("nan")])
def test_window_width_must_be_positive(width):
    with pytest.raises(ValueError, match="window_width"):
        hounsfield_to_unit(np.zeros(3), 40.0, width)


def test_resize_keeps_constant_images_and_batch_axes():
    image = np.full((3, 128, 100), 0.3, np.float32)
    out = resize_image(image, 32)
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_downscaling_is_anti_aliased():
    # A one-pixel checkerboard has no content at 1/4 resolution: a good resize gives flat
    # grey; naive subsampling would keep a full-contrast pattern.
    checker = (np.indices((128, 128)).sum(0) % 2).astype(np.float32)
    out = resize_image(checker, 32)
    assert abs(out.mean() - 0.5) < 0.01
    assert out.std() < 0.05


def test_upscaling_preserves_range_and_mean():
    generator = np.random.default_rng(0)
    image = generator.random((28, 28), dtype=np.float32)
    out = resize_image(image, 56)
    assert out.shape == (56, 56)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert abs(out.mean() - image.mean()) < 0.01


def test_resize_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        resize_image(np.zeros((8, 8)), 0)


def test_smooth_noise_has_unit_std_and_is_correlated():
    field = smooth_noise((4, 64, 64), 2.0, np.random.default_rng(0))
    np.testing.assert_allclose(field.std(axis=(1, 2)), 1.0, rtol=1e-4)
    neighbour_correlation = np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1]
    assert neighbour_correlation > 0.8
