"""Synthetic EHR cohorts: statistics, structure, determinism and round building."""

import time

import numpy as np
import pytest

from fedpriv.data.client_data import build_round_data
from fedpriv.data.ehr import EHRCohort, EHRCohortConfig, make_ehr_cohort, site_partition
from fedpriv.public import icd10


@pytest.fixture(scope="module")
def cohort():
    return make_ehr_cohort(EHRCohortConfig(num_records=10_000, num_sites=5, site_alpha=0.5),
                           np.random.default_rng(0))


def test_ten_thousand_records_well_under_a_second():
    config = EHRCohortConfig(num_records=10_000, num_sites=5)
    make_ehr_cohort(EHRCohortConfig(num_records=10), np.random.default_rng(1))  # warm caches
    start = time.perf_counter()
    make_ehr_cohort(config, np.random.default_rng(1))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("field, value", [("num_records", 0), ("num_sites", 0), ("max_codes", 8),
                                          ("site_alpha", -1.0), ("mean_extra_visits", 0.0), ("name", "")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EHRCohortConfig(**{field: value})


def test_generator_must_be_a_numpy_generator():
    with pytest.raises(TypeError, match="generator"):
        make_ehr_cohort(EHRCohortConfig(num_records=10), 0)


def test_structure_of_records(cohort):
    vocabulary = cohort.vocabulary
    codes = cohort.codes
    assert codes.dtype == np.int32 and codes.shape == (10_000, 64)
    # Padding only at the end of a row.
    assert not np.any((codes[:, :-1] == 0) & (codes[:, 1:] != 0))
    for family in ("age", "sex"):
        assert np.all(np.isin(codes, vocabulary.family_ids(family)).sum(axis=1) == 1)
    sex_ids = vocabulary.ids(icd10.SEX_TOKENS)
    assert np.all(np.any(codes == sex_ids[cohort.sex][:, None], axis=1))
    # Every record carries a cancer code of its own subtype.
    subtype_of = vocabulary.subtype[codes]
    assert np.all(np.any(subtype_of == cohort.labels[:, None], axis=1))
    # Codes repeat across visits: most records hold some token more than once.
    sorted_codes = np.sort(codes, axis=1)
    repeated = np.any((sorted_codes[:, 1:] == sorted_codes[:, :-1]) & (sorted_codes[:, 1:] > 0), axis=1)
    assert repeated.mean() > 0.5
    lengths = (codes > 0).sum(axis=1)
    # age + sex + five or six labs + the primary code at least.
    assert 15 < lengths.mean() < 35 and lengths.min() == 8


def test_demographics_depend_on_subtype(cohort):
    labels, male = cohort.labels, cohort.sex
    prostate, breast = icd10.SUBTYPE_NAMES.index("prostate"), icd10.SUBTYPE_NAMES.index("breast")
    assert np.all(male[labels == prostate] == 1)
    assert male[labels == breast].mean() < 0.03
    bladder = icd10.SUBTYPE_NAMES.index("bladder")
    assert male[labels == bladder].mean() > 0.65
    assert cohort.age.min() >= 18 and cohort.age[labels == breast].mean() < cohort.age[labels == bladder].mean()
    # Every subtype occurs, with prevalences near the base case mix averaged over sites.
    prevalence = np.bincount(labels, minlength=8) / labels.size
    assert prevalence.min() > 0.02 and prevalence.max() < 0.4


def test_labs_follow_diagnoses(cohort):
    names = cohort.lab_names
    has = lambda name: cohort.comorbidities[:, cohort.comorbidity_names.index(name)]
    hba1c = cohort.labs[:, names.index("HBA1C")]
    creatinine = cohort.labs[:, names.index("CREATININE")]
    assert np.corrcoef(hba1c, has("diabetes"))[0, 1] > 0.6
    assert np.corrcoef(np.log(creatinine), has("ckd"))[0, 1] > 0.6
    psa = cohort.labs[:, names.index("PSA")]
    assert np.all(np.isnan(psa[cohort.sex == 0])) and not np.any(np.isnan(psa[cohort.sex == 1]))
    men = cohort.sex == 1
    prostate = cohort.labels == icd10.SUBTYPE_NAMES.index("prostate")
    assert np.median(psa[men & prostate]) > 4 * np.median(psa[men & ~prostate])
    # Lab tokens agree with the values: HbA1c >= 6.5 % gives LAB_HBA1C_HIGH.
    high = np.any(cohort.codes == cohort.vocabulary.id("LAB_HBA1C_HIGH"), axis=1)
    assert np.array_equal(high, hba1c >= 6.5)


def test_comorbidities_co_occur(cohort):
    has = lambda name: cohort.comorbidities[:, cohort.comorbidity_names.index(name)] == 1
    assert has("ckd")[has("diabetes")].mean() > 1.4 * has("ckd")[~has("diabetes")].mean()
    assert has("copd")[has("nicotine_dependence")].mean() > 2 * has("copd")[~has("nicotine_dependence")].mean()
    lung, breast = (cohort.labels == icd10.SUBTYPE_NAMES.index(s) for s in ("lung", "breast"))
    assert has("copd")[lung].mean() > 2 * has("copd")[breast].mean()
    # Diabetic CKD is coded as E11.22.
    e1122 = np.any(cohort.codes == cohort.vocabulary.id("E11.22"), axis=1)
    assert np.array_equal(e1122, has("diabetes") & has("ckd"))


def test_sites_have_their_own_case_mix(cohort):
    parts = site_partition(cohort)
    assert sum(part.size for part in parts) == cohort.num_records
    mix = np.array([np.bincount(cohort.labels[part], minlength=8) / part.size for part in parts])
    assert np.abs(mix - mix.mean(axis=0)).max() > 0.1


def test_same_generator_state_same_cohort():
    config = EHRCohortConfig(num_records=300)
    first = make_ehr_cohort(config, np.random.default_rng(7))
    second = make_ehr_cohort(config, np.random.default_rng(7))
    third = make_ehr_cohort(config, np.random.default_rng(8))
    assert np.array_equal(first.codes, second.codes) and np.array_equal(first.labs, second.labs, equal_nan=True)
    assert not np.array_equal(first.codes, third.codes)


def test_cohort_validates_and_builds_round_data(cohort):
    small = cohort.subset(np.arange(40))
    assert small.num_records == 40 and small.input_shape == (64,)
    with pytest.raises(ValueError, match="codes"):
        EHRCohort(**{**{f: getattr(small, f) for f in ("labels", "comorbidities", "age", "sex", "labs", "site")},
                     "codes": small.codes + 10_000, "vocabulary": small.vocabulary})
    partition = [np.arange(0, 20), np.arange(20, 40)]
    data = build_round_data(small.codes, small.labels, partition, local_steps=1, sampling="full",
                            generator=np.random.default_rng(0))
    assert data.examples["x"].dtype == np.int32 and data.examples["x"].shape == (2, 1, 20, 64)
    multi = build_round_data(small.codes, small.comorbidities, partition, local_steps=2, batch_size=5,
                             sampling="shuffle", generator=np.random.default_rng(0))
    assert multi.examples["y"].shape == (2, 2, 5, len(small.comorbidity_names))


def test_no_record_carries_a_code_its_sex_or_age_excludes():
    # The CMS MCE sex and age edits (fedpriv.public.code_edits): e.g. no cervix code in a man,
    # no prostate code in a woman, no perinatal or pregnancy code in these adults.
    from fedpriv.public import code_edits

    cohort = make_ehr_cohort(EHRCohortConfig(num_records=1000), np.random.default_rng(3))
    tokens = np.array(cohort.vocabulary.tokens)
    for row, male in zip(cohort.codes, cohort.sex):
        codes = [str(code) for code in tokens[row[row > 0]] if cohort.vocabulary.is_code[cohort.vocabulary.id(code)]]
        assert all(code_edits.fits_sex(code, male=bool(male)) for code in codes), (codes, male)
        assert not any(code_edits.age_restricted(code) for code in codes), codes
