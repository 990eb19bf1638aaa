"""Reading CT images from DICOM files: one file, or a user's folder of them.

A hospital's own images enter fedpriv through ``load_dicom_folder``: a folder laid out like
the common image-folder layout (one subfolder per class) becomes an ``ImageCohort``. Every
file is checked before anything is returned, so a corrupt file stops the run with its
path in the message instead of silently shrinking the cohort.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from fedpriv.data._validation import check_int
from fedpriv.data.cohort import ImageCohort
from fedpriv.data.imaging import hounsfield_to_unit, resize_image

logger = logging.getLogger(__name__)

#: Class of the files that sit directly in the root folder, outside any class subfolder.
UNLABELED = "unlabeled"


def read_dicom_modality(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Reads one single-frame grayscale DICOM image in modality units (HU for CT).

    The modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence) is
    applied, so CT pixels come back in Hounsfield units whatever the stored encoding.

    Args:
      path: the DICOM file.

    Returns:
      ``(pixels, inverted)``: float32 ``[H, W]`` modality values, and whether the
      photometric interpretation is MONOCHROME1 (low values displayed white).

    Raises:
      ValueError: naming the file, if it is not DICOM, has no or unreadable pixel data, or
        is not a single-frame grayscale image.
    """
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path, force=False)
    except InvalidDicomError as error:
        raise ValueError(f"{path} is not a valid DICOM file: {error}") from error
    except Exception as error:  # noqa: BLE001 - any parser failure means a corrupt file
        raise ValueError(
            f"{path} could not be read as DICOM ({type(error).__name__}: {error})"
        ) from error
    if "PixelData" not in dataset:
        raise ValueError(f"{path} has no pixel data (PixelData element missing)")
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - truncated data, missing decoder, bad tags
        raise ValueError(
            f"{path} has unreadable pixel data ({type(error).__name__}: {error})"
        ) from error
    if pixels.ndim != 2:
        raise ValueError(
            f"{path} holds pixel data of shape {pixels.shape}; only single-frame grayscale "
            "images [rows, columns] are supported"
        )
    modality = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    inverted = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1"
    return modality, inverted


def load_dicom_folder(
    path: str | os.PathLike,
    image_size: int,
    window_center: float = 40.0,
    window_width: float = 400.0,
) -> ImageCohort:
    """Loads a folder of DICOM slices as a labelled cohort, ImageFolder-style.

    Layout: ``path/<class name>/**/<file>`` gives the class of each file from its
    immediate subfolder of ``path`` (deeper folders inside a class folder belong to that
    class); files directly in ``path`` get class ``"unlabeled"``. Hidden files and folders
    (names starting with ``.``) are ignored. A file is read if it ends in ``.dcm`` (any
    case) — then it must be valid DICOM — or has no extension and pydicom recognises it as
    DICOM (``force=False``); extension-less files that are not DICOM (a README) are
    skipped. Other files are ignored.

    Each image goes through the modality LUT (HU), a centre crop to a square (keeping the
    aspect ratio of anatomy), an anti-aliased resize and the display window. MONOCHROME1
    images are inverted after windowing, as a viewer would display them.

    Args:
      path: the root folder.
      image_size: side of the output images in pixels, >= 1.
      window_center: display window centre in modality units (HU for CT).
      window_width: display window width, > 0.

    Returns:
      An ``ImageCohort`` with class names sorted alphabetically and records ordered by
      class, then path; ``name`` is the folder's name.

    Raises:
      ValueError: if the folder is missing, holds no readable DICOM image, or any DICOM
        file is corrupt or unsupported (the message names the file and the problem).
    """
    image_size = check_int("image_size", image_size, minimum=1)
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"DICOM folder {root} does not exist or is not a directory")

    records: list[tuple[str, Path, np.ndarray]] = []
    for class_name, file in _candidate_files(root):
        if file.suffix.lower() != ".dcm" and not _looks_like_dicom(file):
            logger.debug("skipping %s: no .dcm extension and not recognised as DICOM", file)
            continue
        modality, inverted = read_dicom_modality(file)
        # Resize in modality units, then window: averaging HU is what a coarser scanner
        # does (partial volume); averaging windowed values would shrink saturated bone.
        unit = hounsfield_to_unit(
            resize_image(_center_crop(modality), image_size), window_center, window_width
        )
        records.append((class_name, file, 1.0 - unit if inverted else unit))
    if not records:
        raise ValueError(
            f"DICOM folder {root} holds no readable DICOM image (looked for *.dcm files and "
            "extension-less DICOM files, in the root and its class subfolders)"
        )

    records.sort(key=lambda record: (record[0], str(record[1])))
    class_names = tuple(sorted({class_name for class_name, _, _ in records}))
    label_of = {class_name: index for index, class_name in enumerate(class_names)}
    images = np.stack([image for _, _, image in records])[..., None]
    labels = np.array([label_of[class_name] for class_name, _, _ in records], dtype=np.int32)
    logger.info(
        "loaded %d DICOM images in %d classes from %s", len(records), len(class_names), root
    )
    return ImageCohort(
        images=np.clip(images, 0.0, 1.0).astype(np.float32),
        labels=labels,
        class_names=class_names,
        name=root.name or str(root),
    )


def _candidate_files(root: Path) -> list[tuple[str, Path]]:
    """``(class name, file)`` for every non-hidden file, in a deterministic order."""
    candidates = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file():
            candidates.append((UNLABELED, child))
        elif child.is_dir():
            for file in sorted(child.rglob("*")):
                relative = file.relative_to(child).parts
                if file.is_file() and not any(part.startswith(".") for part in relative):
                    candidates.append((child.name, file))
    return candidates


def _looks_like_dicom(file: Path) -> bool:
    """True for an extension-less file with a DICOM preamble (``DICM`` at byte 128)."""
    if file.suffix:
        return False
    try:
        pydicom.dcmread(file, force=False, stop_before_pixels=True)
    except InvalidDicomError:
        return False
    except Exception:  # noqa: BLE001 - it claims to be DICOM but is broken: read it to report
        return True
    return True


def _center_crop(image: np.ndarray) -> np.ndarray:
    height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]
