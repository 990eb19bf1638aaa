"""A cohort built on a real CT slice: pydicom's ``CT_small.dcm`` as anatomical background.

The procedural phantoms are clean by construction; this cohort keeps the statistics of a
real scan (bone trabeculae, streak artefacts, fat planes between muscles) while the label
is still controlled: each patient is the same slice under a small random pose, intensity
and noise change, with a synthetic lesion drawn into the paraspinal soft tissue. The file
ships inside the pydicom package, so nothing is downloaded.

``hounsfield_to_unit``, ``resize_image`` and ``load_dicom_folder`` are re-exported here
because they are the CT toolbox a user reaches for next to this cohort.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.ndimage as ndi
from pydicom.data import get_testdata_file

from fedpriv.data._validation import check_generator, check_int
from fedpriv.data.cohort import ImageCohort
from fedpriv.data.dicom import load_dicom_folder, read_dicom_modality
from fedpriv.data.imaging import (
    SOFT_TISSUE_WINDOW,
    hounsfield_to_unit,
    resize_image,
    smooth_noise,
)
from fedpriv.data.lesions import (
    balanced_labels,
    draw_lesions,
    lesion_class_names,
    lesion_radii,
    sample_lesion_centers,
    site_margin_pixels,
)

__all__ = [
    "hounsfield_to_unit",
    "load_ct_small_slice",
    "load_dicom_folder",
    "make_ct_slice_cohort",
    "resize_image",
]

logger = logging.getLogger(__name__)

CT_SMALL_FILE = "CT_small.dcm"
MIN_IMAGE_SIZE = 16

#: Soft tissue that may host a lesion (muscle, unenhanced parenchyma), in HU.
SOFT_TISSUE_HU = (-20.0, 120.0)

# Chunked like the phantoms: bounded memory, and a fixed chunk keeps the stream fixed.
_CHUNK = 256


def load_ct_small_slice() -> np.ndarray:
    """The 128x128 axial CT slice shipped with pydicom, in Hounsfield units.

    A thoracic vertebra with paraspinal muscles, the descending aorta and both lung
    bases. Stored as int16 with ``RescaleSlope = 1``, ``RescaleIntercept = -1024``; the
    values span about -900 HU (lung) to +1170 HU (cortical bone).

    Returns:
      float32 ``[128, 128]`` Hounsfield units.

    Raises:
      ValueError: if the file is missing from the pydicom installation (it is never
        downloaded).
    """
    path = get_testdata_file(CT_SMALL_FILE, download=False)
    if path is None:
        raise ValueError(
            f"{CT_SMALL_FILE} is not in the installed pydicom's test data; reinstall pydicom "
            "(fedpriv never downloads data at run time)"
        )
    hu, _ = read_dicom_modality(path)
    return hu


def make_ct_slice_cohort(
    num_records: int, image_size: int, generator: np.random.Generator, num_classes: int = 4
) -> ImageCohort:
    """A cohort of jittered copies of the real CT slice, labelled by a synthetic lesion.

    Per patient: a random similarity transform (rotation within +-7 degrees, scale
    0.92-1.08, shift within 4% of the field of view) of the slice, a linear HU change
    (gain 0.95-1.05, offset +-15 HU, i.e. scanner calibration), a lesion of the label's
    type (``fedpriv.data.lesions``) centred in soft tissue, the soft-tissue window and
    mildly correlated noise. Classes are balanced.

    Args:
      num_records: number of patients (images), >= 1.
      image_size: side of the square images in pixels, >= 16.
      generator: host-side generator; the same state gives the same cohort, bit for bit.
      num_classes: number of classes, in [2, 5].

    Returns:
      An ``ImageCohort`` with images ``[num_records, image_size, image_size, 1]``.

    Raises:
      ValueError: naming the argument, if one is out of range.
      TypeError: if ``generator`` is not a ``numpy.random.Generator``.
    """
    num_records = check_int("num_records", num_records, minimum=1)
    image_size = check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    class_names = lesion_class_names(num_classes)
    generator = check_generator("generator", generator)

    # Resize once, anti-aliased, then warp at the target resolution: warping the 128x128
    # original straight onto a coarse grid would alias.
    background = resize_image(load_ct_small_slice(), image_size)
    labels = balanced_labels(num_records, len(class_names), generator)
    images = np.empty((num_records, image_size, image_size, 1), dtype=np.float32)
    for start in range(0, num_records, _CHUNK):
        stop = min(start + _CHUNK, num_records)
        images[start:stop, ..., 0] = _render_chunk(background, labels[start:stop], generator)
    logger.debug("generated %d CT-slice images of %dx%d", num_records, image_size, image_size)
    return ImageCohort(
        images=images,
        labels=labels,
        class_names=class_names,
        name=f"ct_small{image_size}",
    )


def _render_chunk(
    background: np.ndarray, labels: np.ndarray, generator: np.random.Generator
) -> np.ndarray:
    count = labels.shape[0]
    size = background.shape[0]
    source = _similarity_source_coordinates(size, count, generator)
    # Edge pixels are lung/air at the top and soft tissue below; extending them is a
    # better guess than a constant outside the field of view.
    hu = ndi.map_coordinates(background, source, order=1, mode="nearest")
    # The host region is found on the canonical slice and warped along with it, so the
    # lesion follows the anatomy under every pose.
    region = ndi.map_coordinates(_lesion_region(background), source, order=1, mode="nearest")

    gain = generator.uniform(0.95, 1.05, size=(count, 1, 1)).astype(np.float32)
    offset = generator.uniform(-15.0, 15.0, size=(count, 1, 1)).astype(np.float32)
    hu = hu.astype(np.float32) * gain + offset

    low, high = SOFT_TISSUE_HU
    site = (region > 0.5) & (hu > low) & (hu < high)
    centers = sample_lesion_centers(site, site_margin_pixels(size), generator)
    radii = lesion_radii(size, count, generator)
    hu = draw_lesions(hu, labels, centers, radii, generator)

    unit = hounsfield_to_unit(hu, *SOFT_TISSUE_WINDOW)
    noise_std = generator.uniform(0.008, 0.03, size=(count, 1, 1)).astype(np.float32)
    unit = unit + noise_std * smooth_noise(hu.shape, 0.5, generator)
    return np.clip(unit, 0.0, 1.0)


def _lesion_region(background: np.ndarray) -> np.ndarray:
    """Where lesions may go on the canonical slice: the paraspinal muscles.

    The band below the transverse processes and above the posterior fat; it keeps
    lesions out of the spinal canal and the aorta, whose unenhanced HU also reads as soft
    tissue but which no focal lesion of these types would occupy.
    """
    low, high = SOFT_TISSUE_HU
    rows = np.arange(background.shape[0]) / background.shape[0]
    band = ((rows >= 0.66) & (rows <= 0.90))[:, None]
    return (band & (background > low) & (background < high)).astype(np.float32)


def _similarity_source_coordinates(
    size: int, count: int, generator: np.random.Generator
) -> np.ndarray:
    """Source pixel of every output pixel under ``count`` random similarity transforms.

    Rotation within +-0.12 rad, scale 0.92-1.08, shift within 4% of the side. Returned as
    ``[2, count, size, size]`` so one ``map_coordinates`` call warps every patient: no
    per-image Python work.
    """
    angle = generator.uniform(-0.12, 0.12, size=(count, 1, 1))
    scale = generator.uniform(0.92, 1.08, size=(count, 1, 1))
    shift = generator.uniform(-0.04, 0.04, size=(2, count, 1, 1)) * size
    middle = (size - 1) / 2.0
    grid = np.arange(size, dtype=np.float64) - middle
    rows, cols = grid[None, :, None], grid[None, None, :]
    # Inverse map (output -> source), so every output pixel gets a value.
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    source_rows = middle + cos * rows - sin * cols - shift[0]
    source_cols = middle + sin * rows + cos * cols - shift[1]
    return np.stack([source_rows, source_cols])
