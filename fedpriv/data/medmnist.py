"""MedMNIST archives already on disk, as image cohorts.

MedMNIST (Yang et al., 2023, arXiv:2110.14795) distributes each data set as one ``.npz``
with ``{train,val,test}_{images,labels}``. fedpriv never downloads: the user points at a
file they obtained themselves, and every defect of that file is reported with its path
and key before anything is returned.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fedpriv.data._validation import check_int
from fedpriv.data.cohort import ImageCohort
from fedpriv.data.imaging import resize_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: ITU-R BT.601 luma weights, the ones PIL's ``convert("L")`` uses, so a grayscale image
#: here matches what MedMNIST's own tools would produce.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_medmnist_npz(
    path: str | os.PathLike, split: str = "train", image_size: int | None = None
) -> ImageCohort:
    """Loads one split of a MedMNIST-format ``.npz`` as a single-channel cohort.

    Images may be uint8 ``[N, H, W]``, ``[N, H, W, 1]`` or RGB ``[N, H, W, 3]`` (converted
    to luminance), or floating point already in ``[0, 1]``; uint8 is scaled by 1/255.
    Labels may be ``[N]`` or ``[N, 1]``; multi-label sets (ChestMNIST's ``[N, 14]``) are
    refused because a cohort has one class per record. The number of classes is taken
    from the labels of every split present, so train and test cohorts of one file share
    their ``class_names`` (``"class_0"``, ``"class_1"``, ...).

    Args:
      path: the ``.npz`` file.
      split: ``"train"``, ``"val"`` or ``"test"``.
      image_size: optional output side in pixels (anti-aliased resize); ``None`` keeps
        the stored size.

    Returns:
      An ``ImageCohort`` named ``"<file stem>/<split>"``.

    Raises:
      ValueError: naming the file (and key), if the file is missing or not an npz
        archive, a key is missing, or shapes, dtypes, values or lengths are invalid.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size is not None:
        image_size = check_int("image_size", image_size, minimum=1)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"MedMNIST file {path} does not exist or is not a file")

    images_key, labels_key = f"{split}_images", f"{split}_labels"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"MedMNIST file {path} is not a readable npz archive: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"MedMNIST file {path} is a single .npy array, not an npz archive")
    with archive:
        missing = [key for key in (images_key, labels_key) if key not in archive.files]
        if missing:
            raise ValueError(
                f"MedMNIST file {path} lacks key(s) {missing}; it holds {sorted(archive.files)}"
            )
        raw_images = _read(archive, path, images_key)
        labels = _labels(_read(archive, path, labels_key), path, labels_key)
        # Every split's labels count, so train and test of one file agree on the classes.
        largest = [
            _labels(_read(archive, path, key), path, key).max(initial=0)
            for key in (f"{name}_labels" for name in SPLITS)
            if key in archive.files
        ]
        num_classes = 1 + int(max(largest))

    if raw_images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MedMNIST file {path}: {images_key} holds {raw_images.shape[0]} images but "
            f"{labels_key} holds {labels.shape[0]} labels"
        )
    if raw_images.shape[0] == 0:
        raise ValueError(f"MedMNIST file {path}: {images_key} is empty")
    images = _grayscale_unit(raw_images, path, images_key)
    if image_size is not None:
        images = np.clip(resize_image(images, image_size), 0.0, 1.0)
    logger.info("loaded %d images of split %r from %s", images.shape[0], split, path)
    return ImageCohort(
        images=images[..., None].astype(np.float32),
        labels=labels,
        class_names=tuple(f"class_{k}" for k in range(num_classes)),
        name=f"{path.stem}/{split}",
    )


def _read(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"MedMNIST file {path}: key {key!r} is unreadable: {error}") from error


def _labels(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``[N]`` int32 labels from ``[N]`` or ``[N, 1]``, else raises naming file and key."""
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise ValueError(
            f"MedMNIST file {path}: {key} has shape {raw.shape}; expected [N] or [N, 1] "
            "(multi-label data sets are not supported)"
        )
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"MedMNIST file {path}: {key} must hold integers, got dtype {raw.dtype}")
    if raw.size and raw.min() < 0:
        raise ValueError(f"MedMNIST file {path}: {key} holds negative label {raw.min()}")
    return raw.astype(np.int32)


def _grayscale_unit(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``[N, H, W]`` float32 in [0, 1] from the stored images."""
    if raw.ndim == 4 and raw.shape[-1] in (1, 3):
        channels = raw.shape[-1]
    elif raw.ndim == 3:
        channels = 0
    else:
        raise ValueError(
            f"MedMNIST file {path}: {key} has shape {raw.shape}; expected [N, H, W], "
            "[N, H, W, 1] or [N, H, W, 3]"
        )
    if raw.dtype == np.uint8:
        images = raw.astype(np.float32) / 255.0
    elif np.issubdtype(raw.dtype, np.floating):
        images = raw.astype(np.float32)
        if not (np.all(images >= 0.0) and np.all(images <= 1.0)):
            raise ValueError(
                f"MedMNIST file {path}: {key} is floating point but not within [0, 1]"
            )
    else:
        raise ValueError(
            f"MedMNIST file {path}: {key} must be uint8 or float in [0, 1], got {raw.dtype}"
        )
    if channels == 3:
        # The weights sum to 1 only up to float32 rounding; clip so white stays <= 1.
        return np.clip(images @ LUMA_WEIGHTS, 0.0, 1.0)
    if channels == 1:
        return images[..., 0]
    return images
