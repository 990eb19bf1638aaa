"""Where a cohort comes from: a typed spec and one loader that dispatches on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedpriv.data.cohort import ImageCohort
from fedpriv.data.ct import make_ct_slice_cohort
from fedpriv.data.dicom import load_dicom_folder
from fedpriv.data.ehr import EHRCohort, EHRCohortConfig, make_ehr_cohort
from fedpriv.data.notes import NotesCohort, NotesConfig, make_notes_cohort
from fedpriv.public.clinical_words import clinical_vocabulary
from fedpriv.data.medmnist import load_medmnist_npz
from fedpriv.data.phantoms import make_phantom_cohort
from fedpriv.data.records import TokenRecords
from fedpriv.data.tabular import (TabularCohort, check_csv_header, load_breast_cancer, load_tabular_csv,
                                    make_tabular_ehr_cohort)

COHORT_KINDS = ("phantom", "ct_slice", "dicom_folder", "medmnist_npz", "ehr", "notes", "tabular_ehr", "breast_cancer",
                "tabular_csv")
GENERATED_KINDS = ("phantom", "ct_slice")
TOKEN_COHORT_KINDS = ("ehr", "notes")
# Tables of numeric and categorical columns (fedpriv.data.tabular), encoded as float vectors.
TABULAR_COHORT_KINDS = ("tabular_ehr", "breast_cancer", "tabular_csv")
# Sensitivity tiers of EHR records, strictest last: a record takes the strictest tier of
# its codes. Substance-use records (ICD-10-CM F10-F19) fall under 42 CFR Part 2; other
# mental and behavioural disorders (F01-F99) under state mental-health privacy laws.
EHR_TIER_NAMES = ("general", "mental_health", "substance_use")


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
      num_sites: hospitals the token cohorts (``"ehr"``, ``"notes"``) are generated at.
      max_length: codes per EHR record or tokens per note.
      spec: the column spec (a YAML file) of a ``"tabular_csv"`` table at ``path``.

    The token kinds generate ICD-10-CM code bags (``"ehr"``) or clinical notes
    (``"notes"``) labelled by cancer subtype; ``image_size`` and ``num_classes`` do not
    apply to them.
    """

    kind: str
    num_records: int | None
    image_size: int | None = None
    num_classes: int | None = None
    path: str | None = None
    num_sites: int = 4
    max_length: int = 64
    spec: str | None = None

    def __post_init__(self):
        if self.kind in TABULAR_COHORT_KINDS:
            self._check_tabular()
            return
        if self.kind not in COHORT_KINDS:
            raise ValueError(f"data.cohort.kind must be one of {COHORT_KINDS}, got {self.kind!r}")
        if self.kind in TOKEN_COHORT_KINDS:
            if not (isinstance(self.num_records, int) and self.num_records >= 2):
                raise ValueError(f"data.cohort.num_records must be an integer >= 2 for kind {self.kind!r}, "
                                 f"got {self.num_records!r}")
            if not (isinstance(self.num_sites, int) and self.num_sites >= 1):
                raise ValueError(f"data.cohort.num_sites must be an integer >= 1, got {self.num_sites!r}")
            return
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

    def _check_tabular(self):
        """The tabular kinds' fields; a CSV's header is checked against its spec here, before any compute."""
        if self.kind == "tabular_ehr" and not (isinstance(self.num_records, int) and self.num_records >= 2):
            raise ValueError(f"data.cohort.num_records must be an integer >= 2 for kind 'tabular_ehr', "
                             f"got {self.num_records!r}")
        if self.kind != "tabular_ehr" and self.num_records is not None and not (
                isinstance(self.num_records, int) and self.num_records >= 2):
            raise ValueError(f"data.cohort.num_records must be None or an integer >= 2, got {self.num_records!r}")
        if self.kind == "tabular_csv":
            if self.path is None or not Path(self.path).is_file():
                raise ValueError(f"data.cohort.path must be an existing CSV file for kind 'tabular_csv', "
                                 f"got {self.path!r}")
            if self.spec is None:
                raise ValueError("data.cohort.spec (a YAML column spec) is required for kind 'tabular_csv'")
            check_csv_header(self.path, self.spec)


def load_cohort(source: CohortSource,
                generator: np.random.Generator) -> ImageCohort | TokenRecords | TabularCohort:
    """Generates or loads the cohort described by ``source``."""
    if source.kind == "tabular_ehr":
        return make_tabular_ehr_cohort(source.num_records, generator, num_sites=source.num_sites)
    if source.kind == "breast_cancer":
        return load_breast_cancer(source.num_records, generator)
    if source.kind == "tabular_csv":
        return load_tabular_csv(source.path, source.spec, source.num_records, generator)
    if source.kind == "ehr":
        return ehr_records(make_ehr_cohort(EHRCohortConfig(num_records=source.num_records, num_sites=source.num_sites,
                                                           max_codes=source.max_length), generator))
    if source.kind == "notes":
        return notes_records(make_notes_cohort(NotesConfig(num_records=source.num_records, num_sites=source.num_sites,
                                                           max_len=source.max_length, keep_texts=False), generator))
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


def ehr_records(cohort: EHRCohort) -> TokenRecords:
    """An EHR cohort as token records; each record's tier is the strictest of its codes'."""
    vocabulary = cohort.vocabulary
    code_tier = np.zeros(vocabulary.size, np.int32)
    for token_id, token in enumerate(vocabulary.tokens):
        if vocabulary.is_code[token_id] and token.startswith("F"):
            category = int(token[1:3])
            code_tier[token_id] = 2 if 10 <= category <= 19 else 1
    tiers = code_tier[cohort.codes].max(axis=1).astype(np.int32)
    return TokenRecords(inputs=cohort.codes, labels=cohort.labels, site=cohort.site, tiers=tiers, kind="codes",
                        class_names=cohort.class_names, tier_names=EHR_TIER_NAMES,
                        vocabulary_size=vocabulary.size, vocabulary=vocabulary, name=cohort.name)


def notes_records(cohort: NotesCohort) -> TokenRecords:
    """A notes cohort as token records (one general tier: notes carry no tier codes)."""
    vocabulary = clinical_vocabulary()
    return TokenRecords(inputs=cohort.tokens, labels=cohort.labels, site=cohort.site,
                        tiers=np.zeros(cohort.labels.shape, np.int32), kind="tokens",
                        class_names=cohort.class_names, tier_names=("general",),
                        vocabulary_size=vocabulary.size, vocabulary=vocabulary, name=cohort.name)
