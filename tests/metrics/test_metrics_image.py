"""MSE, PSNR and SSIM against closed forms and an independent NumPy oracle."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fedpriv.metrics.image as image_module
from fedpriv.metrics import mse, psnr, ssim


def _gaussian_window_2d(size, sigma=1.5):
    # Written independently of the library: explicit double loop over offsets.
    half = size // 2
    window = np.array([[np.exp(-((i - half) ** 2 + (j - half) ** 2) / (2 * sigma**2)) for j in range(size)]
                       for i in range(size)])
    return window / window.sum()


def _ssim_oracle(a, b, data_range=1.0, window_size=11):
    """Wang et al. (2004), eq. (13) with Gaussian-weighted statistics, 'valid' positions only."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    w = _gaussian_window_2d(window_size)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for n in range(a.shape[0]):
        per_channel = []
        for c in range(a.shape[3]):
            pa = np.lib.stride_tricks.sliding_window_view(a[n, :, :, c], (window_size, window_size))
            pb = np.lib.stride_tricks.sliding_window_view(b[n, :, :, c], (window_size, window_size))
            mu_a = np.einsum("hwij,ij->hw", pa, w)
            mu_b = np.einsum("hwij,ij->hw", pb, w)
            da = pa - mu_a[..., None, None]
            db = pb - mu_b[..., None, None]
            var_a = np.einsum("hwij,ij->hw", da * da, w)
            var_b = np.einsum("hwij,ij->hw", db * db, w)
            cov = np.einsum("hwij,ij->hw", da * db, w)
            ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            per_channel.append(ssim_map.mean())
        scores.append(np.mean(per_channel))
    return np.array(scores)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Smooth-ish images (structure at several scales) so SSIM is far from trivial.
    base = rng.uniform(size=(3, 32, 32, 3))
    smooth = (base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)) / 3
    return smooth.astype(np.float32)


def test_mse_closed_form():
    a = np.zeros((2, 3, 3, 1), np.float32)
    b = np.stack([np.full((3, 3, 1), 0.5), np.zeros((3, 3, 1))]).astype(np.float32)
    b[1, 0, 0, 0] = 0.9
    np.testing.assert_allclose(mse(a, b), [0.25, 0.81 / 9], rtol=1e-6)


def test_psnr_closed_form_and_identical_images():
    a = np.zeros((3, 8, 8, 1), np.float32)
    b = a.copy()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    values = np.asarray(psnr(a, b))
    np.testing.assert_allclose(values[:2], [20.0, 40.0], rtol=1e-5)
    assert values[2] == np.inf
    # The same error on a 0..255 scale gives the same dB.
    np.testing.assert_allclose(psnr(a * 255, b * 255, data_range=255.0)[:2], [20.0, 40.0], rtol=1e-5)
    assert np.all(np.isinf(np.asarray(psnr(b, b))))


def test_ssim_of_identical_images_is_one(images):
    np.testing.assert_allclose(ssim(images, images), np.ones(3), atol=1e-6)


@pytest.mark.parametrize("shift", [0.05, 0.2])
def test_ssim_constant_shift_matches_oracle(images, shift):
    shifted = images + np.float32(shift)
    expected = _ssim_oracle(images, shifted)
    np.testing.assert_allclose(ssim(images, shifted), expected, rtol=1e-4, atol=1e-5)
    # A pure shift leaves the structure term at 1 and only lowers luminance.
    assert np.all(expected < 1.0) and np.all(expected > 0.5)


def test_ssim_matches_oracle_on_unrelated_images_and_scale(images):
    rng = np.random.default_rng(1)
    other = rng.uniform(size=images.shape).astype(np.float32)
    np.testing.assert_allclose(ssim(images, other), _ssim_oracle(images, other), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ssim(images * 255, other * 255, data_range=255.0),
                               _ssim_oracle(images * 255, other * 255, data_range=255.0), rtol=1e-4, atol=1e-5)


def test_ssim_small_images_use_the_largest_odd_window():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(2, 8, 9, 1)).astype(np.float32)
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
    assert image_module.ssim_window_size(8, 9) == 7
    np.testing.assert_allclose(ssim(a, b), _ssim_oracle(a, b, window_size=7), rtol=1e-4, atol=1e-5)


def test_ssim_decreases_with_noise(images):
    rng = np.random.default_rng(3)
    noise = rng.normal(size=images.shape).astype(np.float32)
    scores = [np.asarray(ssim(images, images + level * noise)) for level in (0.0, 0.02, 0.05, 0.1, 0.3)]
    for before, after in zip(scores, scores[1:]):
        assert np.all(after < before)
    assert np.all(scores[1] > 0.98) and np.all(scores[-1] < 0.5)


def test_ssim_is_symmetric(images):
    other = images[::-1] * 0.8
    np.testing.assert_allclose(ssim(images, other), ssim(other, images), rtol=1e-6)


@pytest.mark.parametrize("fn", [mse, psnr, ssim])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match=r"\(1, 8, 8, 1\).*\(2, 8, 8, 1\)"):
        fn(np.zeros((1, 8, 8, 1)), np.zeros((2, 8, 8, 1)))


def test_ssim_input_checks():
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(np.zeros((1, 2, 8, 1)), np.zeros((1, 2, 8, 1)))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)), data_range=0.0)


def test_docstring_examples():
    result = doctest.testmod(image_module)
    assert result.attempted > 0 and result.failed == 0
