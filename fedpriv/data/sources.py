"""Where a cohort comes from: a typed spec and one loader that dispatches on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedpriv.data.cohort import ImageCohort
from fedpriv.data.ct import make_ct_slice_cohort
from fedpriv.data.dicom import load_dicom_folder
from fedpriv.data.medmnist import load_medmnist_npz
from fedpriv.data.phantoms import make_phantom_cohort

COHORT_KINDS = ("phantom", "ct_slice", "dicom_folder", "medmnist_npz")
GENERATED_KINDS = ("phantom", "ct_slice")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CohortSource:
    """A cohort spec.

    Attributes:
      kind: ``"phantom"`` (procedural CT phantoms), ``"ct_slice"`` (the real
        ``CT_small.dcm`` with synthetic lesions), ``"dicom_folder"`` or ``"medmnist_npz"``
        (files the user already has; nothing is downloaded).
      num_records: records to generate; for files, ``None`` keeps all, a number keeps
        a random subset of ``num_records`` (drawn from the data stream, in file order;
        the first N of a class-sorted DICOM folder would drop whole classes).
      image_size: side of the square images.
      num_classes: classes to generate (generated kinds only; files carry their labels).
      path: the folder or ``.npz`` file for the file kinds.
    """

    kind: str
    num_records: int | None
    image_size: int
    num_classes: int | None = None
    path: str | None = None

    def __post_init__(self):
        if self.kind not in COHORT_KINDS:
            raise ValueError(f"data.cohort.kind must be one of {COHORT_KINDS}, got {self.kind!r}")
        if not (isinstance(self.image_size, int) and self.image_size >= 16):
            raise ValueError(f"data.cohort.image_size must be an integer >= 16, got {self.image_size!r}")
        if self.kind in GENERATED_KINDS:
            if not (isinstance(self.num_records, int) and self.num_records >= 2):
                raise ValueError(f"data.cohort.num_records must be an integer >= 2 for kind "
                                 f"{self.kind!r}, got {self.num_records!r}")
            if not (isinstance(self.num_classes, int) and 2 <= self.num_classes <= 5):
                raise ValueError(f"data.cohort.num_classes must be an integer in [2, 5] for kind "
                                 f"{self.kind!r}, got {self.num_classes!r}")
        else:
            if self.path is None:
                raise ValueError(f"data.cohort.path is required for kind {self.kind!r}")
            if not Path(self.path).exists():
                raise ValueError(f"data.cohort.path {self.path!r} does not exist")
            if self.num_records is not None and not (isinstance(self.num_records, int) and self.num_records >= 2):
                raise ValueError(f"data.cohort.num_records must be None or an integer >= 2, got {self.num_records!r}")


def load_cohort(source: CohortSource, generator: np.random.Generator) -> ImageCohort:
    """Generates or loads the cohort described by ``source``."""
    if source.kind == "phantom":
        return make_phantom_cohort(source.num_records, source.image_size, generator, num_classes=source.num_classes)
    if source.kind == "ct_slice":
        return make_ct_slice_cohort(source.num_records, source.image_size, generator, num_classes=source.num_classes)
    if source.kind == "dicom_folder":
        cohort = load_dicom_folder(source.path, source.image_size)
    else:
        cohort = load_medmnist_npz(source.path, split="train", image_size=source.image_size)
    if source.num_records is not None and source.num_records < cohort.num_records:
        cohort = cohort.subset(np.sort(generator.choice(cohort.num_records, source.num_records, replace=False)))
    return cohort
