"""Tabular cohorts: patients as rows of numeric and categorical columns, and their encoding.

A ``TabularCohort`` holds each record's raw values (numeric columns in their units,
categorical columns as an index into their categories) and the class label. The model
sees the encoding of TabLeak (Vero, Balunović, Dimitrov, Vechev, "TabLeak: Tabular Data
Leakage in Federated Learning", ICML 2023, arXiv 2210.01785): every categorical
column one-hot, every numeric column standardised.

Standardisation uses PUBLIC statistics, not the training split's: each numeric column
declares its plausible range ``[low, high]`` (clinical reference limits, the published
range of a public table, or the user's column spec), and is encoded as
``(value - centre) / scale`` with ``centre = (low + high) / 2`` and ``scale = (high - low) / 4``,
so the declared range maps to ``[-2, 2]``. Every hospital encodes alike without sharing
data statistics, the train/test split cannot shift the encoding, and the attacker, who
knows the published schema, knows the box its numeric features lie in.

Three sources: ``make_tabular_ehr_cohort`` (the EHR patients of ``fedpriv.data.ehr``),
``load_tabular_csv`` (a CSV the user has plus a column spec) and ``load_breast_cancer``
(the Wisconsin diagnostic breast-cancer table shipped inside scikit-learn; offline).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from pathlib import Path

import numpy as np

from fedpriv.data.ehr import COMORBIDITY_NAMES, EHRCohortConfig, make_ehr_cohort
from fedpriv.public import icd10

COLUMN_TYPES = ("numeric", "categorical")
# The declared range maps to [-NUMERIC_BOX, NUMERIC_BOX] in the encoding (see the module docstring).
NUMERIC_BOX = 2.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class TabularColumn:
    """One column of a table.

    Attributes:
      name: column name.
      type: ``"numeric"`` or ``"categorical"``.
      low, high: the plausible range of a numeric column, in ``unit`` (``low < high``).
      unit: unit of a numeric column (reports only).
      categories: the categories of a categorical column, at least two.
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    unit: str = ""
    categories: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"column name must be a non-empty string, got {self.name!r}")
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.name!r}: type must be one of {COLUMN_TYPES}, got {self.type!r}")
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        distinct = len(set(self.categories))
        if self.type == "categorical" and (distinct < 2 or distinct != len(self.categories)):
            raise ValueError(f"column {self.name!r}: a categorical column needs >= 2 distinct categories, "
                             f"got {self.categories!r}")
        if self.type == "numeric" and not (self.low is not None and self.high is not None
                                           and np.isfinite([self.low, self.high]).all() and self.low < self.high):
            raise ValueError(f"column {self.name!r}: a numeric column needs a finite range [low, high] with "
                             f"low < high, got [{self.low!r}, {self.high!r}]")

    @property
    def width(self) -> int:
        """Encoded width: one for a numeric column, one per category for a categorical one."""
        return 1 if self.type == "numeric" else len(self.categories)

    @property
    def centre(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def scale(self) -> float:
        return (self.high - self.low) / (2 * NUMERIC_BOX)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TabularCohort:
    """Labelled rows of one table.

    Attributes:
      values: ``[N, F]`` float64 raw values: numeric columns in their units, categorical
        columns as the category index.
      labels: ``[N]`` int32 class, index into ``class_names``.
      columns: the ``F`` columns.
      class_names: class names, index = label.
      name: name used in reports.
    """

    values: np.ndarray
    labels: np.ndarray
    columns: tuple[TabularColumn, ...]
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self):
        values, labels = np.asarray(self.values, np.float64), np.asarray(self.labels)
        if values.ndim != 2 or values.shape[1] != len(self.columns):
            raise ValueError(f"values must be [N, {len(self.columns)}] (one column each), got {values.shape}")
        if labels.shape != values.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({values.shape[0]},), got {labels.dtype} "
                             f"{labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got [{labels.min()}, {labels.max()}]")
        for index, column in enumerate(self.columns):
            check_column_values(values[:, index], column, where=self.name)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "labels", labels.astype(np.int32))

    @property
    def num_records(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int]:
        return (sum(column.width for column in self.columns),)

    @functools.cached_property
    def images(self) -> np.ndarray:
        """The encoded records ``[N, D]`` float32, under the name round building uses for every modality."""
        return encode(self.values, self.columns)

    @property
    def is_categorical(self) -> np.ndarray:
        return np.array([column.type == "categorical" for column in self.columns])

    def public_layout(self) -> tuple[tuple[str, str, int], ...]:
        """``(name, type, width)`` per column, in encoded order: the schema an attacker knows."""
        return tuple((column.name, column.type, column.width) for column in self.columns)

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Raw values ``[N, F]`` of encoded rows ``[N, D]`` (a categorical column's argmax)."""
        return decode(encoded, self.columns)

    def subset(self, indices: np.ndarray, name: str | None = None) -> TabularCohort:
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, values=self.values[indices], labels=self.labels[indices],
                                   name=self.name if name is None else name)


def check_column_values(values: np.ndarray, column: TabularColumn, *, where: str) -> None:
    """Raises a ``ValueError`` naming ``where`` and the column for values outside its spec."""
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: column {column.name!r} holds missing or non-finite values")
    if column.type == "categorical":
        bad = values[(values != np.round(values)) | (values < 0) | (values >= column.width)]
        if bad.size:
            raise ValueError(f"{where}: column {column.name!r} holds category indices outside "
                             f"[0, {column.width}): {bad[:3].tolist()}")
    elif values.size and (values.min() < column.low or values.max() > column.high):
        raise ValueError(f"{where}: column {column.name!r} holds values in [{values.min():.4g}, {values.max():.4g}], "
                         f"outside its declared range [{column.low}, {column.high}]")


def encode(values: np.ndarray, columns: tuple[TabularColumn, ...]) -> np.ndarray:
    """``[N, D]`` float32: one-hot categoricals, numerics standardised with public statistics."""
    blocks = []
    for index, column in enumerate(columns):
        if column.type == "categorical":
            blocks.append(np.eye(column.width)[values[:, index].astype(np.int64)])
        else:
            blocks.append(((values[:, index] - column.centre) / column.scale)[:, None])
    return np.concatenate(blocks, axis=1).astype(np.float32)


def decode(encoded: np.ndarray, columns: tuple[TabularColumn, ...]) -> np.ndarray:
    """The inverse of ``encode`` on any ``[N, D]`` rows: argmax per categorical block."""
    encoded = np.asarray(encoded, np.float64)
    values, start = [], 0
    for column in columns:
        block = encoded[:, start:start + column.width]
        values.append(np.argmax(block, axis=1).astype(np.float64) if column.type == "categorical"
                      else block[:, 0] * column.scale + column.centre)
        start += column.width
    return np.stack(values, axis=1)


# Plausible adult ranges (units of fedpriv.public.icd10.LABS) that generated labs are clipped to.
# PSA is left out: it is measured in men only, so half the rows would have no value.
_EHR_LAB_RANGES = {"HBA1C": (4.0, 14.0), "CREATININE": (0.3, 6.0), "HEMOGLOBIN": (6.0, 19.0),
                   "LDL": (30.0, 250.0), "CEA": (0.2, 60.0)}
_AGE_RANGE = (18.0, 95.0)


def ehr_columns() -> tuple[TabularColumn, ...]:
    """Age, sex, five labs and ten comorbidity flags of ``fedpriv.data.ehr`` as columns."""
    labs = [TabularColumn(name=lab.name.lower(), type="numeric", low=_EHR_LAB_RANGES[lab.name][0],
                          high=_EHR_LAB_RANGES[lab.name][1], unit=lab.unit)
            for lab in icd10.LABS if lab.name in _EHR_LAB_RANGES]
    flags = [TabularColumn(name=name, type="categorical", categories=("no", "yes")) for name in COMORBIDITY_NAMES]
    return (TabularColumn(name="age", type="numeric", low=_AGE_RANGE[0], high=_AGE_RANGE[1], unit="years"),
            TabularColumn(name="sex", type="categorical", categories=("female", "male")), *labs, *flags)


def make_tabular_ehr_cohort(num_records: int, generator: np.random.Generator, *, num_sites: int = 4) -> TabularCohort:
    """The EHR patients of ``make_ehr_cohort`` as a table, the cancer subtype as label.

    The same generator (subtype-dependent age and sex, Gaussian-copula comorbidities,
    labs correlated with diagnoses) drives the values; labs are clipped to the plausible
    ranges of ``ehr_columns`` (tails beyond them are rare and the encoding needs a range).
    """
    cohort = make_ehr_cohort(EHRCohortConfig(num_records=num_records, num_sites=num_sites), generator)
    lab_names = [lab.name for lab in icd10.LABS]
    columns = ehr_columns()
    labs = [np.clip(cohort.labs[:, lab_names.index(column.name.upper())], column.low, column.high)
            for column in columns[2:2 + len(_EHR_LAB_RANGES)]]
    values = np.column_stack([np.clip(cohort.age, *_AGE_RANGE), cohort.sex, *labs, cohort.comorbidities])
    return TabularCohort(values=values, labels=cohort.labels, columns=columns, class_names=cohort.class_names,
                         name="tabular_ehr")


def load_breast_cancer(num_records: int | None, generator: np.random.Generator) -> TabularCohort:
    """The Wisconsin diagnostic breast-cancer table (569 tumours, 30 numeric features,
    malignant/benign), read offline from scikit-learn's bundled copy.

    Each column's range is the published minimum and maximum of the whole public table.

    References:
      Street, Wolberg, Mangasarian. "Nuclear feature extraction for breast tumor diagnosis",
      IS&T/SPIE Biomedical Image Processing and Biomedical Visualization 1993.
    """
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer  # imported on use: ~1 s to import

    table = sklearn_breast_cancer()
    values = np.asarray(table.data, np.float64)
    columns = tuple(TabularColumn(name=str(name).replace(" ", "_"), type="numeric", low=float(low), high=float(high))
                    for name, low, high in zip(table.feature_names, values.min(axis=0), values.max(axis=0)))
    cohort = TabularCohort(values=values, labels=np.asarray(table.target, np.int32), columns=columns,
                           class_names=tuple(str(name) for name in table.target_names), name="breast_cancer")
    if num_records is not None and num_records < cohort.num_records:
        cohort = cohort.subset(np.sort(generator.choice(cohort.num_records, num_records, replace=False)))
    return cohort


def read_column_spec(spec: str | dict) -> tuple[tuple[TabularColumn, ...], str, tuple[str, ...] | None]:
    """Columns, label column and (optional) label categories of a spec: a dict or a YAML file.

    The spec reads ``{"label": NAME, "label_categories": [...] (optional), "columns": [{"name":
    ..., "type": "numeric", "range": [low, high], "unit": ...} | {"name": ..., "type":
    "categorical", "categories": [...]}]}``.
    """
    if not isinstance(spec, dict):
        import yaml  # a Hydra dependency; read only for file specs

        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"data.cohort.spec {str(spec)!r} is not a file")
        spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("columns"), list) or not spec.get("label"):
        raise ValueError("data.cohort.spec must map 'label' to the label column and 'columns' to a list of "
                         "{name, type, range | categories}")
    columns = []
    for entry in spec["columns"]:
        if any(isinstance(category, bool) for category in entry.get("categories", ())):
            raise ValueError(f"data.cohort.spec: column {entry.get('name')!r} lists a category YAML read as a "
                             "boolean (yes/no/true/false/on/off unquoted): quote it, e.g. categories: ['yes', 'no']")
        low, high = (entry.get("range") or (None, None))
        number = lambda value: None if value is None else float(value)
        columns.append(TabularColumn(name=entry.get("name"), type=entry.get("type"), low=number(low), high=number(high),
                                     unit=str(entry.get("unit", "")), categories=tuple(entry.get("categories", ()))))
    label_categories = spec.get("label_categories")
    return tuple(columns), str(spec["label"]), None if label_categories is None else tuple(map(str, label_categories))


def check_csv_header(path: str, spec: str | dict) -> None:
    """Raises a ``ValueError`` naming the file and the column when the spec's columns are not in its header."""
    columns, label, _ = read_column_spec(spec)
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), [])
    missing = [name for name in (*(column.name for column in columns), label) if name not in header]
    if missing:
        raise ValueError(f"data.cohort.path {path!r}: the spec names column(s) {missing} that the file's header "
                         f"{header} lacks")


def load_tabular_csv(path: str, spec: str | dict, num_records: int | None,
                     generator: np.random.Generator) -> TabularCohort:
    """A CSV the user already has, read with its column spec (see ``read_column_spec``).

    Raises:
      ValueError: naming the file and the column when the header lacks a spec column, a
        numeric cell does not parse or lies outside the declared range, a categorical cell
        is not one of the declared categories, or a label is not a declared class.
    """
    columns, label, label_categories = read_column_spec(spec)
    check_csv_header(path, spec)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    values = np.stack([_parse_column(path, column, [row[column.name] for row in rows]) for column in columns],
                      axis=1) if rows else np.zeros((0, len(columns)))
    raw_labels = [row[label].strip() for row in rows]
    class_names = label_categories or tuple(sorted(set(raw_labels)))
    unknown = sorted(set(raw_labels) - set(class_names))
    if unknown or len(class_names) < 2:
        raise ValueError(f"data.cohort.path {path!r}: label column {label!r} must hold >= 2 classes among "
                         f"{list(class_names)}, got unknown values {unknown[:3]}")
    labels = np.array([class_names.index(value) for value in raw_labels], np.int32)
    cohort = TabularCohort(values=values, labels=labels, columns=columns, class_names=class_names,
                           name=Path(path).stem)
    if num_records is not None and num_records < cohort.num_records:
        cohort = cohort.subset(np.sort(generator.choice(cohort.num_records, num_records, replace=False)))
    return cohort


def _parse_column(path: str, column: TabularColumn, cells: list[str]) -> np.ndarray:
    cells = [cell.strip() for cell in cells]
    if column.type == "categorical":
        unknown = sorted(set(cells) - set(column.categories))
        if unknown:
            raise ValueError(f"data.cohort.path {path!r}: column {column.name!r} holds values {unknown[:3]} that "
                             f"are not among its categories {list(column.categories)}")
        values = np.array([column.categories.index(cell) for cell in cells], np.float64)
    else:
        try:
            values = np.array([float(cell) for cell in cells], np.float64)
        except ValueError:
            bad = next(row for row, cell in enumerate(cells) if not _is_number(cell))
            raise ValueError(f"data.cohort.path {path!r}: column {column.name!r} is numeric but row {bad + 1} holds "
                             f"{cells[bad]!r}") from None
    check_column_values(values, column, where=f"data.cohort.path {path!r}")
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
