"""Tabular cohorts: the EHR table's ranges and correlations, CSV specs, breast cancer."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import CohortSource, load_cohort
from fedpriv.data.tabular import (NUMERIC_BOX, TabularCohort, TabularColumn, load_breast_cancer, load_tabular_csv,
                                  make_tabular_ehr_cohort, read_column_spec)
from fedpriv.public import icd10

SPEC = {"label": "outcome", "label_categories": ["alive", "dead"],
        "columns": [{"name": "age", "type": "numeric", "range": [18, 100], "unit": "years"},
                    {"name": "smoker", "type": "categorical", "categories": ["no", "yes", "former"]},
                    {"name": "sbp", "type": "numeric", "range": [70, 220], "unit": "mmHg"}]}
ROWS = ["age,smoker,sbp,outcome", "54,no,130,alive", "71,former,150,dead", "33,yes,118,alive", "66,no,141,dead"]


@pytest.fixture(scope="module")
def ehr_table():
    return make_tabular_ehr_cohort(3000, np.random.default_rng(7))


def _write(tmp_path, rows=ROWS):
    path = tmp_path / "table.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_ehr_table_values_lie_in_their_declared_ranges(ehr_table):
    assert ehr_table.input_shape == (1 + 2 + 5 + 10 * 2,)
    assert ehr_table.num_classes == len(icd10.SUBTYPE_NAMES)
    for index, column in enumerate(ehr_table.columns):
        values = ehr_table.values[:, index]
        if column.type == "numeric":
            assert column.low <= values.min() and values.max() <= column.high, column.name
        else:
            assert set(np.unique(values)) <= set(range(column.width)), column.name
    numeric = ehr_table.images[:, [0, 3, 4, 5, 6, 7]]
    assert numeric.min() >= -NUMERIC_BOX - 1e-6 and numeric.max() <= NUMERIC_BOX + 1e-6
    assert np.abs(ehr_table.decode(ehr_table.images) - ehr_table.values).max() < 1e-3


def test_ehr_table_keeps_the_generator_correlations(ehr_table):
    names = [column.name for column in ehr_table.columns]
    column = lambda name: ehr_table.values[:, names.index(name)]
    diabetic = column("diabetes") == 1
    # HbA1c is drawn around 7.6 % with diabetes and 5.4 % without (fedpriv.data.ehr).
    assert column("hba1c")[diabetic].mean() - column("hba1c")[~diabetic].mean() > 1.5
    prostate = ehr_table.labels == icd10.SUBTYPE_NAMES.index("prostate")
    assert prostate.sum() > 50 and np.all(column("sex")[prostate] == 1)
    # Creatinine centres near 2.0 mg/dL with CKD, 0.8-1.0 without.
    ckd = column("ckd") == 1
    assert column("creatinine")[ckd].mean() > 1.5 > column("creatinine")[~ckd].mean()


def test_csv_with_its_spec_loads_and_encodes(tmp_path):
    cohort = load_tabular_csv(_write(tmp_path), SPEC, None, np.random.default_rng(0))
    assert cohort.class_names == ("alive", "dead") and cohort.labels.tolist() == [0, 1, 0, 1]
    assert cohort.input_shape == (5,)
    np.testing.assert_allclose(cohort.values[1], [71, 2, 150])
    # age: centre 59, scale (100 - 18) / 4 = 20.5; smoker "former" is the third category.
    np.testing.assert_allclose(cohort.images[1], [(71 - 59) / 20.5, 0, 0, 1, (150 - 145) / 37.5], rtol=1e-6)


@pytest.mark.parametrize("rows, message", [
    ([line.replace("sbp", "systolic") if i == 0 else line for i, line in enumerate(ROWS)], "'sbp'"),
    ([*ROWS[:2], "71,former,high,dead"], "column 'sbp' is numeric but row 2 holds 'high'"),
    ([*ROWS[:2], "71,sometimes,150,dead"], "column 'smoker' holds values ['sometimes']"),
    ([*ROWS[:2], "171,no,150,dead"], "column 'age' holds values in [54, 171]"),
    ([*ROWS[:2], "71,no,150,unknown"], "label column 'outcome'"),
])
def test_csv_spec_mismatch_names_the_file_and_the_column(tmp_path, rows, message):
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError) as error:
        load_tabular_csv(path, SPEC, None, np.random.default_rng(0))
    assert path in str(error.value) and message in str(error.value)


def test_csv_header_mismatch_is_refused_when_the_source_is_built(tmp_path):
    path = _write(tmp_path, ["age,smoker,outcome", "54,no,alive"])
    spec = tmp_path / "spec.yaml"
    spec.write_text("label: outcome\ncolumns:\n  - {name: age, type: numeric, range: [18, 100]}\n"
                    "  - {name: sbp, type: numeric, range: [70, 220]}\n")
    with pytest.raises(ValueError, match=r"table\.csv.*\['sbp'\]"):
        CohortSource(kind="tabular_csv", num_records=None, path=path, spec=str(spec))


def test_bad_column_specs_are_refused():
    with pytest.raises(ValueError, match="categorical column needs >= 2"):
        TabularColumn(name="sex", type="categorical", categories=("female",))
    with pytest.raises(ValueError, match="finite range"):
        TabularColumn(name="age", type="numeric", low=10.0, high=10.0)
    with pytest.raises(ValueError, match=r"'smoker'.*boolean.*quote it"):  # YAML reads unquoted yes/no as booleans
        read_column_spec({"label": "y", "columns": [{"name": "smoker", "type": "categorical",
                                                     "categories": [True, False]}]})
    with pytest.raises(ValueError, match="outside its declared range"):
        TabularCohort(values=np.array([[120.0]]), labels=np.array([0]), class_names=("a", "b"), name="t",
                      columns=(TabularColumn(name="age", type="numeric", low=0.0, high=100.0),))


def test_breast_cancer_loads_offline():
    cohort = load_breast_cancer(None, np.random.default_rng(0))
    assert cohort.num_records == 569 and cohort.input_shape == (30,)
    assert cohort.class_names == ("malignant", "benign") and np.bincount(cohort.labels).tolist() == [212, 357]
    assert not cohort.is_categorical.any()
    assert cohort.images.min() >= -NUMERIC_BOX - 1e-5 and cohort.images.max() <= NUMERIC_BOX + 1e-5
    assert load_breast_cancer(100, np.random.default_rng(0)).num_records == 100


def test_load_cohort_dispatches_the_tabular_kinds():
    table = load_cohort(CohortSource(kind="tabular_ehr", num_records=40), np.random.default_rng(0))
    assert isinstance(table, TabularCohort) and table.num_records == 40
    assert table.public_layout()[:2] == (("age", "numeric", 1), ("sex", "categorical", 2))
    with pytest.raises(ValueError, match="data.cohort.num_records"):
        CohortSource(kind="tabular_ehr", num_records=None)
