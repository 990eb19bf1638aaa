"""Synthetic EHR cohorts: cancer patients as bags of real ICD-10-CM codes and tokens.

Each record is one patient with one of the eight cancer subtypes of
``fedpriv.public.icd10.SUBTYPE_NAMES`` as label, drawn at one hospital (site) with its
own case mix. The record is a bag of public-vocabulary token ids: an age-bin and a sex
token, one bin token per lab test, the primary cancer code repeated on every visit,
comorbidity codes (most on several visits, so per-record counts above one are common),
subtype-typical presentation and treatment codes, and a few unrelated background codes.

What is modelled, and how (all vectorised; 10k records take well under a second):

* case mix: site sizes ~ Dirichlet(4), each site's subtype prevalence ~
  Dirichlet(``site_alpha`` * 8 * base prevalence), base prevalence roughly that of US
  incidence among the eight subtypes;
* age and sex depend on subtype (prostate is all male, breast 99 % female);
* ten comorbidities with realistic co-occurrence: a Gaussian copula whose latent
  correlation links e.g. diabetes, hypertension and CKD, or COPD and nicotine
  dependence; marginals depend on age and subtype (lung cancer raises COPD and smoking);
* labs correlated with diagnoses (HbA1c with diabetes, creatinine with CKD, PSA with
  prostate cancer, CEA with colorectal cancer, ...) and binned by the public reference
  ranges of ``fedpriv.public.icd10.LABS``; PSA is measured in men only (NaN otherwise).

The numbers are plausible, not fitted to any registry; the cohort is a test bed for
gradient leakage, not for epidemiology.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.special

from fedpriv.data._validation import check_generator, check_int, check_positive_float
from fedpriv.public import code_edits, icd10

# Per-subtype parameters, in the order of icd10.SUBTYPE_NAMES:
# breast, lung, colorectal, prostate, lymphoma, pancreas, melanoma, bladder.
BASE_PREVALENCE = np.array([0.22, 0.17, 0.13, 0.17, 0.07, 0.05, 0.12, 0.07])
MEAN_AGE = np.array([62.0, 70.0, 66.0, 67.0, 60.0, 70.0, 63.0, 73.0])
FEMALE_PROBABILITY = np.array([0.99, 0.48, 0.46, 0.0, 0.45, 0.49, 0.42, 0.24])
CHEMOTHERAPY_PROBABILITY = np.array([0.5, 0.6, 0.55, 0.15, 0.8, 0.7, 0.2, 0.35])

# (name, leaf codes used for it, baseline prevalence at age 65, logit change per decade).
COMORBIDITIES: tuple[tuple[str, tuple[str, ...], float, float], ...] = (
    ("diabetes", ("E11.9", "E11.65", "E11.40", "E11.319"), 0.22, 0.2),
    ("hypertension", ("I10",), 0.50, 0.4),
    ("ckd", ("N18.2", "N18.30", "N18.31", "N18.32", "N18.4", "N18.9"), 0.15, 0.4),
    ("copd", ("J44.9", "J44.1", "J44.0"), 0.12, 0.3),
    ("heart_failure", ("I50.9", "I50.22", "I50.32", "I50.42"), 0.08, 0.5),
    ("atrial_fibrillation", ("I48.91", "I48.0", "I48.20"), 0.09, 0.6),
    ("depression", ("F32.9", "F32.A", "F33.1", "F33.9"), 0.15, -0.1),
    ("obesity", ("E66.9", "E66.01", "E66.811"), 0.30, -0.1),
    ("hyperlipidemia", ("E78.5", "E78.00", "E78.2"), 0.40, 0.2),
    ("nicotine_dependence", ("F17.210", "F17.200"), 0.15, -0.2),
)
COMORBIDITY_NAMES = tuple(name for name, *_ in COMORBIDITIES)
_C = {name: i for i, name in enumerate(COMORBIDITY_NAMES)}
# Latent correlations of the Gaussian copula (positive definite; checked in the tests).
_LATENT_CORRELATIONS = {
    ("diabetes", "hypertension"): 0.4, ("diabetes", "ckd"): 0.45, ("hypertension", "ckd"): 0.45,
    ("diabetes", "obesity"): 0.45, ("diabetes", "hyperlipidemia"): 0.35,
    ("hypertension", "hyperlipidemia"): 0.3, ("hypertension", "heart_failure"): 0.35,
    ("heart_failure", "atrial_fibrillation"): 0.5, ("ckd", "heart_failure"): 0.3,
    ("copd", "nicotine_dependence"): 0.55, ("copd", "heart_failure"): 0.2,
    ("depression", "nicotine_dependence"): 0.2, ("obesity", "hypertension"): 0.3,
}
# Logit shifts of comorbidities by cancer subtype.
_SUBTYPE_EFFECTS = {
    ("lung", "copd"): 1.2, ("lung", "nicotine_dependence"): 1.6, ("bladder", "nicotine_dependence"): 1.0,
    ("bladder", "copd"): 0.5, ("pancreas", "diabetes"): 0.8, ("pancreas", "depression"): 0.5,
    ("colorectal", "obesity"): 0.4, ("colorectal", "diabetes"): 0.3, ("breast", "obesity"): 0.3,
}
# Optional presentation/treatment codes: (candidate leaves, probability per subtype).
_OPTIONAL_CODES: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...] = (
    (("Z17.0",), (0.7, 0, 0, 0, 0, 0, 0, 0)),
    (("N63.10", "N63.20"), (0.3, 0, 0, 0, 0, 0, 0, 0)),
    (("Z90.11", "Z90.12"), (0.3, 0, 0, 0, 0, 0, 0, 0)),
    (("R05.1", "R05.9"), (0, 0.5, 0, 0, 0, 0, 0, 0)),
    (("K92.1", "K92.2"), (0, 0, 0.3, 0, 0, 0, 0, 0)),
    (("D50.0",), (0, 0, 0.3, 0, 0, 0, 0, 0)),
    (("D12.6",), (0, 0, 0.3, 0, 0, 0, 0, 0)),
    (("N40.0", "N40.1"), (0, 0, 0, 0.4, 0, 0, 0, 0)),
    (("R17",), (0, 0, 0, 0, 0, 0.5, 0, 0)),
    (("R63.4",), (0, 0.2, 0.1, 0, 0.3, 0.5, 0, 0)),
    (("R59.1",), (0, 0, 0, 0, 0.4, 0, 0, 0)),
    (("R61",), (0, 0, 0, 0, 0.3, 0, 0, 0)),
    (("D22.5",), (0, 0, 0, 0, 0, 0, 0.4, 0)),
    (("R31.0", "R31.9"), (0, 0, 0, 0, 0, 0, 0, 0.6)),
    (("N39.0",), (0, 0, 0, 0, 0, 0, 0, 0.3)),
    (("R53.83",), (0.3,) * 8),
    (("Z79.899",), (0.3,) * 8),
)
_METASTASIS_PROBABILITY = 0.25
_SECOND_PRIMARY_LEAF_PROBABILITY = 0.3
_REPEAT_PROBABILITY = 0.7  # chance a chronic code is coded again at each later visit
_MAX_EXTRA_VISITS = 7
_MAX_BACKGROUND = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class EHRCohortConfig:
    """How an EHR cohort is generated.

    Attributes:
      num_records: number of patients ``N``, >= 1.
      num_sites: number of hospitals, >= 1.
      max_codes: tokens per record ``M`` (bags longer than that are truncated, dropping
        background and secondary codes first), >= 16.
      site_alpha: Dirichlet concentration of each site's case mix, > 0 (smaller = more skew).
      mean_extra_visits: mean of the Poisson number of visits after the first, > 0.
      mean_background_codes: mean of the Poisson number of unrelated codes, > 0.
      name: name used in reports.

    Raises:
      ValueError: naming the field, the value and what is allowed.
    """

    num_records: int = 2000
    num_sites: int = 4
    max_codes: int = 64
    site_alpha: float = 1.0
    mean_extra_visits: float = 2.0
    mean_background_codes: float = 1.0
    name: str = "ehr"

    def __post_init__(self) -> None:
        check_int("num_records", self.num_records, minimum=1)
        check_int("num_sites", self.num_sites, minimum=1)
        check_int("max_codes", self.max_codes, minimum=16)
        check_positive_float("site_alpha", self.site_alpha)
        check_positive_float("mean_extra_visits", self.mean_extra_visits)
        check_positive_float("mean_background_codes", self.mean_background_codes)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EHRCohort:
    """Patients as bags of public-vocabulary token ids.

    Attributes:
      codes: ``[N, M]`` int32 token ids, 0 = padding at the end of each row; a token may
        repeat (one occurrence per visit).
      labels: ``[N]`` int32 cancer subtype, index into ``class_names``.
      comorbidities: ``[N, L]`` int32 multi-hot comorbidity targets (``comorbidity_names``).
      age: ``[N]`` float32 years.
      sex: ``[N]`` int32, 0 = female, 1 = male.
      labs: ``[N, n_labs]`` float32 values in the units of ``fedpriv.public.icd10.LABS``,
        NaN where not measured (PSA in women).
      site: ``[N]`` int32 hospital of each record.
      vocabulary: the public vocabulary the ids refer to.
      class_names: subtype names, index = label.
      comorbidity_names: names of the comorbidity columns.
      lab_names: names of the lab columns.
      name: name used in reports.

    Raises:
      ValueError: naming the field, when a shape, dtype or range is invalid.
    """

    codes: np.ndarray
    labels: np.ndarray
    comorbidities: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    labs: np.ndarray
    site: np.ndarray
    vocabulary: icd10.Vocabulary
    class_names: tuple[str, ...] = icd10.SUBTYPE_NAMES
    comorbidity_names: tuple[str, ...] = COMORBIDITY_NAMES
    lab_names: tuple[str, ...] = tuple(lab.name for lab in icd10.LABS)
    name: str = "ehr"

    def __post_init__(self) -> None:
        codes = self.codes
        if not isinstance(codes, np.ndarray) or codes.ndim != 2 or codes.dtype != np.int32 or codes.shape[0] < 1:
            raise ValueError(f"codes must be an int32 array [N >= 1, M], got "
                             f"{getattr(codes, 'shape', None)} {getattr(codes, 'dtype', type(codes).__name__)}")
        if codes.min() < 0 or codes.max() >= self.vocabulary.size:
            raise ValueError(f"codes must lie in [0, {self.vocabulary.size - 1}] (vocabulary ids), got "
                             f"values in [{codes.min()}, {codes.max()}]")
        n = codes.shape[0]
        expected = {"labels": ((n,), np.int32), "comorbidities": ((n, len(self.comorbidity_names)), np.int32),
                    "age": ((n,), np.float32), "sex": ((n,), np.int32),
                    "labs": ((n, len(self.lab_names)), np.float32), "site": ((n,), np.int32)}
        for field, (shape, dtype) in expected.items():
            value = getattr(self, field)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
                raise ValueError(f"{field} must be a {np.dtype(dtype).name} array of shape {shape}, got "
                                 f"{getattr(value, 'shape', None)} {getattr(value, 'dtype', type(value).__name__)}")
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise ValueError(f"labels must lie in [0, {len(self.class_names) - 1}], got values in "
                             f"[{self.labels.min()}, {self.labels.max()}]")
        if not np.isin(self.sex, (0, 1)).all() or not np.isin(self.comorbidities, (0, 1)).all():
            raise ValueError("sex and comorbidities must hold only 0 and 1")
        if self.site.min() < 0:
            raise ValueError(f"site must be >= 0, got minimum {self.site.min()}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")

    @property
    def num_records(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int]:
        """Shape of one example, ``(max_codes,)``."""
        return (int(self.codes.shape[1]),)

    def subset(self, indices: np.ndarray, name: str | None = None) -> EHRCohort:
        """The cohort restricted to ``indices`` (names and vocabulary kept)."""
        indices = np.asarray(indices, dtype=np.int64)
        per_record = {field: getattr(self, field)[indices]
                      for field in ("codes", "labels", "comorbidities", "age", "sex", "labs", "site")}
        return dataclasses.replace(self, **per_record, name=self.name if name is None else name)


def make_ehr_cohort(config: EHRCohortConfig, generator: np.random.Generator) -> EHRCohort:
    """Generates a synthetic EHR cohort (see the module docstring for the model).

    Args:
      config: sizes and skew of the cohort.
      generator: host-side generator (``fedpriv.keys.numpy_generator`` of the ``data`` stream).

    Returns:
      An ``EHRCohort`` over ``fedpriv.public.icd10.public_vocabulary()``.

    Raises:
      TypeError: if ``generator`` is not a ``numpy.random.Generator``.
    """
    generator = check_generator("generator", generator)
    vocabulary = icd10.public_vocabulary()
    n, num_subtypes = config.num_records, len(icd10.SUBTYPE_NAMES)

    site_share = generator.dirichlet(np.full(config.num_sites, 4.0))
    site = generator.choice(config.num_sites, size=n, p=site_share)
    base = BASE_PREVALENCE / BASE_PREVALENCE.sum()
    case_mix = generator.dirichlet(config.site_alpha * num_subtypes * base, size=config.num_sites)
    labels = _categorical(case_mix[site], generator)

    age = np.clip(generator.normal(MEAN_AGE[labels], 11.0), 18.0, 95.0)
    male = (generator.random(n) >= FEMALE_PROBABILITY[labels]).astype(np.int32)
    comorbidities = _comorbidities(labels, age, generator)
    chemotherapy = generator.random(n) < CHEMOTHERAPY_PROBABILITY[labels]
    labs = _labs(labels, male, comorbidities, chemotherapy, generator)
    visits = 1 + np.minimum(generator.poisson(config.mean_extra_visits, size=n), _MAX_EXTRA_VISITS)

    # Each column is one (token, count) per record; token 0 or count 0 means absent.
    columns: list[tuple[np.ndarray, np.ndarray]] = []
    ones = np.ones(n, dtype=np.int64)
    columns.append((_age_ids(age, vocabulary), ones))
    columns.append((vocabulary.ids(icd10.SEX_TOKENS)[male], ones))
    for j, lab in enumerate(icd10.LABS):
        columns.append((_lab_ids(labs[:, j], lab, vocabulary), ones))
    primary = _primary_codes(labels, male, vocabulary, generator)
    columns.append((primary, visits))
    repeats = lambda present: present * (1 + generator.binomial(visits - 1, _REPEAT_PROBABILITY))
    for k, (name, leaves, _, _) in enumerate(COMORBIDITIES):
        ids = vocabulary.ids(leaves)[generator.integers(len(leaves), size=n)]
        if name == "diabetes":  # diabetic CKD is coded as a diabetes complication
            ids = np.where(comorbidities[:, _C["ckd"]] == 1, vocabulary.id("E11.22"), ids)
        columns.append((ids, repeats(comorbidities[:, k])))
    for leaves, probabilities in _OPTIONAL_CODES:
        present = generator.random(n) < np.asarray(probabilities)[labels]
        columns.append((vocabulary.ids(leaves)[generator.integers(len(leaves), size=n)], repeats(present)))
    columns.append((np.full(n, vocabulary.id("Z51.11")), chemotherapy * generator.binomial(visits, 0.8)))
    columns.append((np.full(n, vocabulary.id("D70.1")), chemotherapy & (generator.random(n) < 0.2)))
    anaemic = labs[:, _lab_index("HEMOGLOBIN")] < _lab_spec("HEMOGLOBIN").low
    columns.append((np.full(n, vocabulary.id("D63.0")), anaemic & (generator.random(n) < 0.5)))
    columns.append(_second_cancer_codes(labels, male, primary, vocabulary, generator))
    num_background = np.minimum(generator.poisson(config.mean_background_codes, size=n), _MAX_BACKGROUND)
    for slot in range(_MAX_BACKGROUND):
        columns.append((_draw_from_table([_background_codes()], np.zeros(n, np.int64), male, generator),
                        num_background > slot))
    codes = _expand(columns, config.max_codes)
    return EHRCohort(codes=codes, labels=labels.astype(np.int32), comorbidities=comorbidities,
                     age=age.astype(np.float32), sex=male, labs=labs, site=site.astype(np.int32),
                     vocabulary=vocabulary, name=config.name)


def site_partition(cohort: EHRCohort) -> list[np.ndarray]:
    """One sorted int64 index array per site: the natural split of a cohort into hospitals.

    Each hospital keeps its own case mix. Sites without records give empty arrays.
    """
    num_sites = int(cohort.site.max()) + 1
    return [np.flatnonzero(cohort.site == s).astype(np.int64) for s in range(num_sites)]


def _categorical(probabilities: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """One draw per row of ``[N, K]`` probabilities, by inverting the row's CDF."""
    cumulative = np.cumsum(probabilities, axis=1)
    draws = generator.random(probabilities.shape[0])[:, None] * cumulative[:, -1:]
    return np.minimum((draws >= cumulative).sum(axis=1), probabilities.shape[1] - 1)


def _comorbidities(labels: np.ndarray, age: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    num = len(COMORBIDITIES)
    correlation = np.eye(num)
    for (a, b), rho in _LATENT_CORRELATIONS.items():
        correlation[_C[a], _C[b]] = correlation[_C[b], _C[a]] = rho
    latent = generator.standard_normal((labels.size, num)) @ np.linalg.cholesky(correlation).T
    baseline = scipy.special.logit(np.array([p for _, _, p, _ in COMORBIDITIES]))
    per_decade = np.array([d for *_, d in COMORBIDITIES])
    shift = np.zeros((len(icd10.SUBTYPE_NAMES), num))
    for (subtype, name), value in _SUBTYPE_EFFECTS.items():
        shift[icd10.SUBTYPE_NAMES.index(subtype), _C[name]] = value
    logits = baseline + per_decade * (age[:, None] - 65.0) / 10.0 + shift[labels]
    # Gaussian copula: correlated latent normals, thresholded at each record's marginal.
    return (scipy.special.ndtr(latent) < scipy.special.expit(logits)).astype(np.int32)


def _lab_index(name: str) -> int:
    return [lab.name for lab in icd10.LABS].index(name)


def _lab_spec(name: str) -> icd10.LabSpec:
    return icd10.LABS[_lab_index(name)]


def _labs(labels, male, comorbidities, chemotherapy, generator) -> np.ndarray:
    n = labels.size
    subtype = lambda name: (labels == icd10.SUBTYPE_NAMES.index(name)).astype(float)
    has = lambda name: comorbidities[:, _C[name]].astype(float)
    normal = lambda mean, std: generator.normal(mean, std, size=n)
    lognormal = lambda log_mean, std: np.exp(generator.normal(log_mean, std, size=n))
    hba1c = np.where(has("diabetes") == 1, normal(7.6, 1.2), normal(5.4, 0.35))
    creatinine = np.where(has("ckd") == 1, lognormal(np.log(2.0), 0.35),
                          lognormal(np.log(0.8 + 0.2 * male), 0.15))
    hemoglobin = normal(13.4 + 1.3 * male - 1.5 * subtype("lymphoma") - 1.0 * subtype("colorectal")
                        - 1.2 * has("ckd") - 0.6 * chemotherapy, 1.1)
    ldl = normal(110.0 + 35.0 * has("hyperlipidemia"), 28.0)
    psa = np.where(male == 1, lognormal(np.log(1.2) + 2.0 * subtype("prostate"), 0.7), np.nan)
    cea = lognormal(np.log(1.8) + 1.4 * subtype("colorectal") + 1.1 * subtype("pancreas")
                    + 0.6 * subtype("lung") + 0.4 * has("nicotine_dependence"), 0.5)
    # Columns in the order of icd10.LABS.
    values = np.stack([hba1c, creatinine, hemoglobin, ldl, psa, cea], axis=1)
    return np.where(np.isnan(values), np.nan, np.maximum(values, 0.01)).astype(np.float32)


def _age_ids(age: np.ndarray, vocabulary: icd10.Vocabulary) -> np.ndarray:
    lows = np.array([low for low, _ in icd10.AGE_BINS])
    ids = vocabulary.family_ids("age")
    return ids[np.searchsorted(lows, np.floor(age), side="right") - 1]


def _lab_ids(values: np.ndarray, lab: icd10.LabSpec, vocabulary: icd10.Vocabulary) -> np.ndarray:
    ids = vocabulary.ids(lab.tokens())
    edges = [lab.high] if lab.low is None else [lab.low, lab.high]
    bins = np.searchsorted(np.array(edges), np.nan_to_num(values), side="right")
    return np.where(np.isnan(values), 0, ids[bins]).astype(np.int32)


@functools.lru_cache(maxsize=1)
def _sex_compatible_leaves() -> list[list[np.ndarray]]:
    """``table[subtype][sex]``: the subtype's leaf ids a patient of that sex can be coded with."""
    vocabulary = icd10.public_vocabulary()
    table = []
    for subtype in icd10.SUBTYPE_NAMES:
        leaves = icd10.cancer_subtype_leaves(subtype)
        ids = vocabulary.ids(leaves)
        table.append([ids[[code_edits.fits_sex(code, male=False) for code in leaves]],
                      ids[[code_edits.fits_sex(code, male=True) for code in leaves]]])
    return table


@functools.lru_cache(maxsize=1)
def _background_codes() -> list[np.ndarray]:
    """``table[sex]``: codes unrelated to the modelled diagnoses (so background noise never
    contradicts a target) that a patient of that sex and an adult's age may carry (MCE edits)."""
    vocabulary = icd10.public_vocabulary()
    modelled = {code[:3] for _, leaves, _, _ in COMORBIDITIES for code in leaves}
    categories = np.array([token[:3] for token in vocabulary.tokens])
    unrelated = np.flatnonzero(vocabulary.is_code & (vocabulary.subtype < 0) & ~np.isin(categories, sorted(modelled)))
    adult = [i for i in unrelated if not code_edits.age_restricted(vocabulary.token(i))]
    return [np.array([i for i in adult if code_edits.fits_sex(vocabulary.token(i), male=bool(male))], np.int32)
            for male in (0, 1)]


def _draw_from_table(table, labels, male, generator) -> np.ndarray:
    """A uniform draw from ``table[label][sex]`` for every record, vectorised by padding."""
    width = max(len(ids) for row in table for ids in row)
    padded = np.zeros((len(table), 2, width), dtype=np.int32)
    sizes = np.zeros((len(table), 2), dtype=np.int64)
    for k, row in enumerate(table):
        for s, ids in enumerate(row):
            padded[k, s, : len(ids)] = ids
            sizes[k, s] = len(ids)
    choice = np.floor(generator.random(labels.size) * sizes[labels, male]).astype(np.int64)
    return padded[labels, male, choice]


def _primary_codes(labels, male, vocabulary, generator) -> np.ndarray:
    return _draw_from_table(_sex_compatible_leaves(), labels, male, generator)


def _second_cancer_codes(labels, male, primary, vocabulary, generator):
    """A metastasis code, or a second leaf of the same subtype (laterality, overlapping site)."""
    n = labels.size
    second = _draw_from_table(_sex_compatible_leaves(), labels, male, generator)
    metastases = vocabulary.ids([leaf for cat in ("C77", "C78", "C79") for leaf in icd10.leaves(cat)])
    draw = generator.random(n)
    is_metastasis = draw < _METASTASIS_PROBABILITY
    is_second = (draw >= _METASTASIS_PROBABILITY) & (draw < _METASTASIS_PROBABILITY + _SECOND_PRIMARY_LEAF_PROBABILITY)
    ids = np.where(is_metastasis, metastases[generator.integers(metastases.size, size=n)], second)
    present = is_metastasis | (is_second & (second != primary))
    return ids, present * (1 + generator.binomial(1, 0.5, size=n))


def _expand(columns, max_codes: int) -> np.ndarray:
    """Turns (token, count) columns into ``[N, max_codes]`` rows, each token repeated count times."""
    tokens = np.stack([np.asarray(t, dtype=np.int32) for t, _ in columns], axis=1)
    counts = np.stack([np.asarray(c, dtype=np.int64) for _, c in columns], axis=1)
    counts = np.where(tokens > 0, counts, 0)
    n = tokens.shape[0]
    flat_counts = counts.ravel()
    flat_tokens = np.repeat(tokens.ravel(), flat_counts)
    record = np.repeat(np.repeat(np.arange(n), tokens.shape[1]), flat_counts)
    starts = np.concatenate([[0], np.cumsum(counts.sum(axis=1))[:-1]])
    position = np.arange(flat_tokens.size) - starts[record]
    keep = position < max_codes  # columns come in priority order, so truncation drops the tail
    codes = np.zeros((n, max_codes), dtype=np.int32)
    codes[record[keep], position[keep]] = flat_tokens[keep]
    return codes
