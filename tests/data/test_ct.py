"""The real CT slice, its cohort, and DICOM folders written by the tests themselves."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fedpriv.data import (
    hounsfield_to_unit,
    load_ct_small_slice,
    load_dicom_folder,
    make_ct_slice_cohort,
    resize_image,
)

from .helpers import nearest_centroid_accuracy

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)


def test_ct_small_slice_in_hounsfield_units():
    hu = load_ct_small_slice()
    assert hu.shape == (128, 128) and hu.dtype == np.float32
    # Measured from the file: stored int16 with intercept -1024, lung -896 HU, bone 1167 HU.
    assert hu.min() == -896.0 and hu.max() == 1167.0
    assert (hu < -700).mean() > 0.1  # lung bases
    assert ((hu > -20) & (hu < 120)).mean() > 0.3  # paraspinal soft tissue
    raw = pydicom.dcmread(CT_SMALL).pixel_array
    np.testing.assert_array_equal(hu, raw.astype(np.float32) - 1024.0)


def test_ct_cohort_shapes_determinism_and_variation():
    first = make_ct_slice_cohort(40, 32, np.random.default_rng(5))
    again = make_ct_slice_cohort(40, 32, np.random.default_rng(5))
    other = make_ct_slice_cohort(40, 32, np.random.default_rng(6))
    assert first.images.shape == (40, 32, 32, 1) and first.images.dtype == np.float32
    assert 0.0 <= first.images.min() and first.images.max() <= 1.0
    np.testing.assert_array_equal(first.images, again.images)
    assert np.abs(first.images - other.images).mean() > 0.01
    # Pose jitter: two patients without lesion still differ beyond noise.
    normal = first.images[first.labels == 0, ..., 0]
    assert np.abs(normal[0] - normal[1]).mean() > 0.03


def test_ct_cohort_background_is_the_real_slice():
    cohort = make_ct_slice_cohort(60, 64, np.random.default_rng(0))
    reference = hounsfield_to_unit(resize_image(load_ct_small_slice(), 64))
    mean_image = cohort.images[..., 0].mean(axis=0)
    assert np.corrcoef(mean_image.ravel(), reference.ravel())[0, 1] > 0.9


def test_ct_cohort_lesions_are_learnable():
    train = make_ct_slice_cohort(400, 32, np.random.default_rng(0))
    test = make_ct_slice_cohort(200, 32, np.random.default_rng(1))
    # Chance is 0.25; measured about 0.5 (real anatomy is a busier background).
    assert nearest_centroid_accuracy(train, test) > 0.4


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_records=0), "num_records"),
        (dict(image_size=8), "image_size"),
        (dict(num_classes=9), "num_classes"),
    ],
)
def test_ct_cohort_invalid_arguments(kwargs, field):
    args = dict(num_records=4, image_size=32, generator=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        make_ct_slice_cohort(**args)


def _write_shifted(path, hu_shift):
    """Writes CT_small with every pixel moved by ``hu_shift`` HU."""
    dataset = pydicom.dcmread(CT_SMALL)
    pixels = dataset.pixel_array.astype(np.int16) + np.int16(hu_shift)
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path)


@pytest.fixture()
def dicom_folder(tmp_path):
    root = tmp_path / "hospital"
    (root / "normal").mkdir(parents=True)
    (root / "tumour" / "series1").mkdir(parents=True)
    shutil.copy(CT_SMALL, root / "normal" / "a.dcm")
    _write_shifted(root / "normal" / "b.DCM", 100)
    _write_shifted(root / "tumour" / "series1" / "IMG0001", 200)  # DICOM without extension
    shutil.copy(CT_SMALL, root / "scout.dcm")  # in the root: unlabeled
    (root / "README").write_text("not a DICOM file")  # extension-less, skipped
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.dcm").write_bytes(b"garbage")  # hidden: ignored
    return root


def test_dicom_folder_classes_labels_and_pixels(dicom_folder):
    cohort = load_dicom_folder(dicom_folder, 32)
    assert cohort.class_names == ("normal", "tumour", "unlabeled")
    assert cohort.labels.tolist() == [0, 0, 1, 2]
    assert cohort.images.shape == (4, 32, 32, 1)
    assert cohort.name == "hospital"
    expected = hounsfield_to_unit(resize_image(load_ct_small_slice(), 32))
    np.testing.assert_allclose(cohort.images[0, ..., 0], expected, atol=1e-5)
    np.testing.assert_allclose(cohort.images[3, ..., 0], expected, atol=1e-5)
    # +100 HU shows as +0.25 in the 400-HU window wherever nothing saturates.
    unsaturated = (expected > 0.01) & (expected < 0.7)
    shift = cohort.images[1, ..., 0][unsaturated] - expected[unsaturated]
    assert abs(np.median(shift) - 0.25) < 0.01


def test_dicom_folder_window_is_applied(dicom_folder):
    lung = load_dicom_folder(dicom_folder, 16, window_center=-600, window_width=1500)
    soft = load_dicom_folder(dicom_folder, 16)
    # Lung window shows the lung bases as grey, the soft-tissue window as black.
    assert lung.images[0].min() > 0.1 and soft.images[0].min() == 0.0


def test_corrupt_dcm_file_is_named(dicom_folder):
    broken = dicom_folder / "tumour" / "broken.dcm"
    broken.write_bytes(b"\x00" * 50 + b"not dicom at all")
    with pytest.raises(ValueError, match="broken.dcm"):
        load_dicom_folder(dicom_folder, 32)


def test_truncated_pixel_data_is_named(dicom_folder):
    data = (dicom_folder / "normal" / "a.dcm").read_bytes()
    (dicom_folder / "normal" / "c.dcm").write_bytes(data[: len(data) - 20000])
    with pytest.raises(ValueError, match=r"c\.dcm"):
        load_dicom_folder(dicom_folder, 32)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dicom_folder(tmp_path / "nowhere", 32)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no readable DICOM"):
        load_dicom_folder(tmp_path / "empty", 32)
