"""MedMNIST npz files written by the tests (no download)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import load_medmnist_npz


def _arrays(rgb=False, label_shape="column", n=(12, 4, 6), size=28, seed=0):
    generator = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{split}_images"] = generator.integers(0, 256, size=shape, dtype=np.uint8)
        labels = generator.integers(0, 3, size=count)
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "column" else labels
    # Make class 4 exist only in test, so class count must come from every split.
    arrays["test_labels"][0] = 4
    return arrays


def _write(tmp_path, arrays, name="toymnist.npz"):
    path = tmp_path / name
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("label_shape", ["column", "flat"])
def test_grayscale_round_trip(tmp_path, label_shape):
    arrays = _arrays(label_shape=label_shape)
    cohort = load_medmnist_npz(_write(tmp_path, arrays), "train")
    assert cohort.images.shape == (12, 28, 28, 1) and cohort.images.dtype == np.float32
    np.testing.assert_allclose(cohort.images[..., 0], arrays["train_images"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(cohort.labels, np.ravel(arrays["train_labels"]))
    assert cohort.class_names == ("class_0", "class_1", "class_2", "class_3", "class_4")
    assert cohort.name == "toymnist/train"


def test_rgb_becomes_luminance(tmp_path):
    arrays = _arrays(rgb=True)
    cohort = load_medmnist_npz(_write(tmp_path, arrays), "val")
    rgb = arrays["val_images"].astype(np.float64) / 255.0
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert cohort.images.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(cohort.images[..., 0], expected, atol=1e-6)


def test_pure_colours_map_to_their_luma(tmp_path):
    arrays = _arrays(rgb=True, n=(3, 1, 1))
    arrays["train_images"][:] = 0
    for channel in range(3):
        arrays["train_images"][channel, ..., channel] = 255
    cohort = load_medmnist_npz(_write(tmp_path, arrays))
    np.testing.assert_allclose(cohort.images[:, 0, 0, 0], [0.299, 0.587, 0.114], atol=1e-6)


def test_resize(tmp_path):
    cohort = load_medmnist_npz(_write(tmp_path, _arrays()), "test", image_size=32)
    assert cohort.images.shape == (6, 32, 32, 1)
    assert 0.0 <= cohort.images.min() and cohort.images.max() <= 1.0


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nothere.npz"):
        load_medmnist_npz(tmp_path / "nothere.npz")


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_medmnist_npz(path)


def test_plain_npy_is_refused(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="not an npz"):
        load_medmnist_npz(path)


def test_missing_key_is_named(tmp_path):
    arrays = _arrays()
    del arrays["val_labels"]
    path = _write(tmp_path, arrays)
    load_medmnist_npz(path, "train")  # the other splits still load
    with pytest.raises(ValueError, match="val_labels"):
        load_medmnist_npz(path, "val")


def test_mismatched_lengths_name_file_and_keys(tmp_path):
    arrays = _arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    with pytest.raises(ValueError, match=r"toymnist.npz.*train_images.*train_labels"):
        load_medmnist_npz(_write(tmp_path, arrays))


def test_multilabel_is_refused(tmp_path):
    arrays = _arrays()
    arrays["train_labels"] = np.zeros((12, 14), np.uint8)
    with pytest.raises(ValueError, match="multi-label"):
        load_medmnist_npz(_write(tmp_path, arrays))


def test_bad_split_and_bad_image_shape(tmp_path):
    arrays = _arrays()
    path = _write(tmp_path, arrays)
    with pytest.raises(ValueError, match="split"):
        load_medmnist_npz(path, "validation")
    arrays["train_images"] = np.zeros((12, 28), np.uint8)
    with pytest.raises(ValueError, match="train_images"):
        load_medmnist_npz(_write(tmp_path, arrays, "bad.npz"))
