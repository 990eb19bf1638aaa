"""Synthetic clinical notes of cancer patients, as token ids.

Every note is a short oncology intake note assembled from real ICD-10-CM descriptions
(``simple_icd_10_cm``) and templates: demographics, past medical history (comorbidity
codes), the finding that names the cancer's ICD-10-CM site, and a plan, e.g.::

    67 year old man presents for evaluation . history of type 2 diabetes mellitus without
    complications . ct chest shows mass in upper lobe , left bronchus or lung . plan :
    biopsy and oncology referral .

Each record's label is its cancer subtype (``fedpriv.public.clinical_words.SUBTYPE_NAMES``:
breast, lung, colorectal, prostate, lymphoma, pancreas, melanoma, bladder). Hospitals differ
in their case mix (subtype prevalence ~ Dirichlet(alpha) per site) and in their writing
style (which demographics template they use), so the notes of one site are skewed in both
label and wording. Patient details (age, sex, comorbidities, the exact ICD-10-CM code) are
private; they are what a gradient-leakage attack on the notes can reveal.

The token ids come from the public vocabulary (``fedpriv.public.clinical_words``), padding
id 0, so ``NotesCohort.tokens`` goes straight into ``fedpriv.data.build_round_data``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import simple_icd_10_cm as icd

from fedpriv.data._validation import check_generator, check_int, check_positive_float
from fedpriv.public.clinical_words import PAD_ID, SUBTYPE_NAMES, cancer_codes, clinical_vocabulary

CASE_MIXES = ("dirichlet", "uniform")

# Common comorbidities of cancer patients (ICD-10-CM leaf codes).
COMORBIDITY_CODES = ("E11.9", "I10", "E78.5", "J44.9", "N18.30", "I25.10", "E66.9", "K21.9",
                     "I48.91", "E03.9", "E55.9", "I50.9", "J45.909", "K57.30", "E87.1", "I73.9")

# Per subtype: mean age at diagnosis, the examination that finds it, and plan options.
_SUBTYPE_DETAILS = {
    "breast": (61, ("mammogram", "ultrasound"), ("biopsy and oncology referral", "lumpectomy and adjuvant radiation therapy",
                                                 "mastectomy and genetic counseling", "tumor board discussion")),
    "lung": (68, ("ct chest", "pet ct"), ("biopsy and oncology referral", "lobectomy and surgical consult",
                                          "smoking cessation and staging workup", "chemotherapy and radiation therapy")),
    "colorectal": (66, ("colonoscopy", "ct abdomen and pelvis"), ("biopsy and oncology referral", "colectomy and surgical consult",
                                                                   "neoadjuvant chemotherapy", "port placement and chemotherapy")),
    "prostate": (69, ("mri pelvis", "biopsy"), ("active surveillance and repeat psa in 6 months", "prostatectomy and surgical consult",
                                                "radiation therapy and hormone therapy", "tumor board discussion")),
    "lymphoma": (57, ("pet ct", "biopsy"), ("chemotherapy and oncology referral", "staging workup and pet ct",
                                            "immunotherapy and follow up in 3 weeks", "radiation therapy")),
    "pancreas": (70, ("ct abdomen", "mri abdomen"), ("whipple procedure and surgical consult", "neoadjuvant chemotherapy",
                                                     "biopsy and oncology referral", "port placement and chemotherapy")),
    "melanoma": (58, ("skin biopsy", "dermatoscopy"), ("wide local excision", "immunotherapy and oncology referral",
                                                       "staging workup and pet ct", "follow up in 3 months")),
    "bladder": (72, ("cystoscopy", "ct abdomen and pelvis"), ("transurethral resection of bladder", "chemotherapy and oncology referral",
                                                              "immunotherapy and surgical consult", "repeat cystoscopy in 3 months")),
}
# Each hospital writes demographics in one house style (site index modulo the count).
_DEMOGRAPHICS_STYLES = ("{age} year old {noun} presents for evaluation .",
                        "patient is a {age} year old {adjective} referred by primary care .",
                        "{age} year old {adjective} with {symptom} .")
_SYMPTOMS = {"breast": "palpable lump", "lung": "cough and weight loss", "colorectal": "rectal bleeding",
             "prostate": "urinary symptoms", "lymphoma": "night sweats", "pancreas": "jaundice and weight loss",
             "melanoma": "changing mole", "bladder": "hematuria"}
_MALIGNANT_PREFIX = "malignant neoplasm of "


@dataclasses.dataclass(frozen=True, kw_only=True)
class NotesConfig:
    """How the note cohort is generated.

    Attributes:
      num_records: number of notes ``N`` >= 1.
      num_sites: number of hospitals >= 1.
      max_len: tokens per note after truncation or padding (>= 4).
      case_mix: ``"dirichlet"`` (site prevalences ~ Dirichlet(case_mix_alpha)) or ``"uniform"``
        (every site sees every subtype equally often).
      case_mix_alpha: Dirichlet concentration > 0 (smaller = more skewed sites).
      max_comorbidities: each patient has 0..max_comorbidities comorbidities (uniform), in
        ``[0, len(COMORBIDITY_CODES)]``.
      keep_texts: keep the note texts in the cohort (for reports and tests).
      name: name for reports.

    Raises:
      ValueError: naming the field, the value and what is allowed.
    """

    num_records: int = 800
    num_sites: int = 4
    max_len: int = 64
    case_mix: str = "dirichlet"
    case_mix_alpha: float = 1.0
    max_comorbidities: int = 2
    keep_texts: bool = True
    name: str = "clinical-notes"

    def __post_init__(self) -> None:
        check_int("num_records", self.num_records, minimum=1)
        check_int("num_sites", self.num_sites, minimum=1)
        check_int("max_len", self.max_len, minimum=4)
        if self.case_mix not in CASE_MIXES:
            raise ValueError(f"case_mix must be one of {CASE_MIXES}, got {self.case_mix!r}")
        check_positive_float("case_mix_alpha", self.case_mix_alpha)
        check_int("max_comorbidities", self.max_comorbidities, minimum=0, maximum=len(COMORBIDITY_CODES))
        if not isinstance(self.keep_texts, bool):
            raise ValueError(f"keep_texts must be a bool, got {self.keep_texts!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NotesCohort:
    """Clinical notes as token ids, with their subtype labels and hospitals.

    Attributes:
      tokens: ``[N, max_len]`` int32 ids of the public vocabulary, padded with 0 at the end.
      labels: ``[N]`` int32 subtype index into ``class_names``.
      site: ``[N]`` int32 hospital of each note.
      case_mix: ``[num_sites, num_classes]`` float64 subtype prevalence of each site.
      texts: the notes' texts (before truncation), or ``None``.
      codes: the ICD-10-CM cancer code of each note (private detail), or ``None``.
      class_names: subtype names, index = label.
      name: name for reports.
    """

    tokens: np.ndarray
    labels: np.ndarray
    site: np.ndarray
    case_mix: np.ndarray
    texts: tuple[str, ...] | None
    codes: tuple[str, ...] | None
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        tokens, labels, site = self.tokens, self.labels, self.site
        if not (isinstance(tokens, np.ndarray) and tokens.ndim == 2 and tokens.dtype == np.int32):
            raise ValueError(f"tokens must be an int32 array [N, max_len], got "
                             f"{getattr(tokens, 'shape', None)} {getattr(tokens, 'dtype', type(tokens))}")
        num = tokens.shape[0]
        for field, array in (("labels", labels), ("site", site)):
            if not (isinstance(array, np.ndarray) and array.shape == (num,) and array.dtype == np.int32):
                raise ValueError(f"{field} must be an int32 array of shape ({num},), got "
                                 f"{getattr(array, 'shape', None)} {getattr(array, 'dtype', type(array))}")
        if labels.min() < 0 or labels.max() >= len(self.class_names):
            raise ValueError(f"labels must lie in [0, {len(self.class_names) - 1}], got "
                             f"[{labels.min()}, {labels.max()}]")

    @property
    def num_records(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int]:
        """``(max_len,)``, the shape of one example as models expect it."""
        return (int(self.tokens.shape[1]),)

    @property
    def lengths(self) -> np.ndarray:
        """``[N]`` number of non-padding tokens of each note."""
        return np.sum(self.tokens != PAD_ID, axis=1).astype(np.int32)

    def site_partition(self) -> list[np.ndarray]:
        """The notes of each hospital: one sorted int64 index array per site (a partition
        with label skew from the case mix and wording skew from the house style)."""
        return [np.flatnonzero(self.site == s).astype(np.int64) for s in range(self.case_mix.shape[0])]


def make_notes_cohort(config: NotesConfig, generator: np.random.Generator) -> NotesCohort:
    """Generates a cohort of oncology notes spread over hospitals.

    Args:
      config: sizes, case mix and note length.
      generator: host-side generator (``fedpriv.keys.numpy_generator`` of the ``data`` stream).

    Returns:
      A ``NotesCohort``; the same generator state gives the same cohort.

    Raises:
      TypeError: if ``generator`` is not a ``numpy.random.Generator``.
    """
    generator = check_generator("generator", generator)
    vocabulary = clinical_vocabulary()
    num_classes = len(SUBTYPE_NAMES)
    if config.case_mix == "uniform":
        case_mix = np.full((config.num_sites, num_classes), 1.0 / num_classes)
    else:
        case_mix = generator.dirichlet(np.full(num_classes, config.case_mix_alpha), size=config.num_sites)
    leaves = {subtype: _leaf_codes(subtype) for subtype in SUBTYPE_NAMES}
    site = generator.integers(0, config.num_sites, size=config.num_records).astype(np.int32)
    labels = np.empty(config.num_records, np.int32)
    tokens = np.zeros((config.num_records, config.max_len), np.int32)
    texts, codes = [], []
    for record in range(config.num_records):
        label = int(generator.choice(num_classes, p=case_mix[site[record]]))
        text, code = _write_note(SUBTYPE_NAMES[label], int(site[record]), leaves, config, generator)
        labels[record] = label
        # Strict: a template word missing from the public vocabulary is a bug, not an [UNK].
        tokens[record] = vocabulary.tokenize(text, max_len=config.max_len, strict=True)
        texts.append(text)
        codes.append(code)
    return NotesCohort(tokens=tokens, labels=labels, site=site, case_mix=case_mix,
                       texts=tuple(texts) if config.keep_texts else None,
                       codes=tuple(codes) if config.keep_texts else None,
                       class_names=SUBTYPE_NAMES, name=config.name)


def _leaf_codes(subtype: str) -> dict[str, tuple[str, ...]]:
    """Leaf codes of a subtype usable for each sex (breast codes name the sex)."""
    leaves = [code for code in cancer_codes(subtype) if icd.is_leaf(code)]
    described = [(code, icd.get_description(code).lower()) for code in leaves]
    return {"female": tuple(c for c, d in described if " male " not in f" {d} "),
            "male": tuple(c for c, d in described if "female" not in d)}


def _write_note(subtype: str, site: int, leaves: dict, config: NotesConfig,
                generator: np.random.Generator) -> tuple[str, str]:
    mean_age, examinations, plans = _SUBTYPE_DETAILS[subtype]
    if subtype == "prostate":
        sex = "male"
    elif subtype == "breast":
        sex = "female" if generator.random() < 0.99 else "male"
    else:
        sex = "female" if generator.random() < 0.5 else "male"
    age = int(np.clip(np.round(generator.normal(mean_age, 10.0)), 18, 100))
    style = _DEMOGRAPHICS_STYLES[site % len(_DEMOGRAPHICS_STYLES)]
    sentences = [style.format(age=age, noun="woman" if sex == "female" else "man", adjective=sex,
                              symptom=_SYMPTOMS[subtype])]
    num_comorbidities = int(generator.integers(0, config.max_comorbidities + 1))
    if num_comorbidities:
        chosen = generator.choice(len(COMORBIDITY_CODES), size=num_comorbidities, replace=False)
        histories = [icd.get_description(COMORBIDITY_CODES[i]).lower() for i in chosen]
        sentences.append("history of " + " and ".join(histories) + " .")
    else:
        sentences.append("no past medical history .")
    candidates = leaves[subtype][sex]
    code = candidates[int(generator.integers(len(candidates)))]
    description = icd.get_description(code).lower()
    if description.startswith(_MALIGNANT_PREFIX):
        finding = "mass in " + description[len(_MALIGNANT_PREFIX):]
    else:
        finding = "findings consistent with " + description
    examination = examinations[int(generator.integers(len(examinations)))]
    sentences.append(f"{examination} shows {finding} .")
    sentences.append(f"plan : {plans[int(generator.integers(len(plans)))]} .")
    return " ".join(sentences), code
