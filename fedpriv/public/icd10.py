"""The ICD-10-CM ontology, a public EHR token vocabulary and a public co-occurrence prior.

Everything here is public knowledge shared by the data layer (which builds private cohorts
from it) and by attacks (which may use it as prior knowledge): the code hierarchy of the
official ICD-10-CM release shipped with ``simple_icd_10_cm`` (no download at run time), the
eight cancer subtypes used as labels across fedpriv, a fixed vocabulary of a few thousand
real leaf codes plus demographic and lab-bin tokens, and a co-occurrence prior built from
well-known comorbidity associations, independent of any cohort.

The hierarchy of a leaf code is ``chapter -> block -> category -> code``; e.g. ``C50.911``
is in chapter ``"2"`` (Neoplasms), block ``"C50"``, category ``"C50"``. The category is the
code's first three characters; a three-character code without children (``"I10"``) is its
own category.

References:
  World Health Organization / CDC NCHS, "ICD-10-CM Official Guidelines for Coding and
  Reporting" (the code set itself, via the ``simple_icd_10_cm`` package).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np

with warnings.catch_warnings():
    # The package reads its data file through a deprecated importlib API on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import simple_icd_10_cm as _icd

PAD_TOKEN = "<PAD>"

# The label set shared by every EHR and clinical-notes cohort, in label order.
CANCER_SUBTYPES: dict[str, tuple[str, ...]] = {
    "breast": ("C50",),
    "lung": ("C34",),
    "colorectal": ("C18", "C19", "C20"),
    "prostate": ("C61",),
    "lymphoma": ("C81", "C82", "C83", "C84", "C85"),
    "pancreas": ("C25",),
    "melanoma": ("C43",),
    "bladder": ("C67",),
}
SUBTYPE_NAMES: tuple[str, ...] = tuple(CANCER_SUBTYPES)

# Categories of common chronic conditions, cancer care and symptoms; with every leaf of
# chapter 2 (Neoplasms) they make the code part of the public vocabulary.
CHRONIC_CATEGORIES: tuple[str, ...] = (
    "E11", "E10", "I10", "N18", "J44", "I50", "I48", "F32", "F33", "E66", "E78", "E03", "I25",
    "J45", "K21", "D63", "D64", "D50", "D70", "F17", "N40", "N39", "R05", "R31", "R17", "R53",
    "R63", "R59", "R61", "R11", "R19", "K59", "K92", "E86", "E87", "G89", "M81", "N63", "Z17",
    "Z51", "Z79", "Z80", "Z85", "Z87", "Z90", "Z92", "Z95",
)
NEOPLASM_CHAPTER = "2"

AGE_BINS: tuple[tuple[int, int | None], ...] = (
    (18, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 79), (80, None))
SEX_TOKENS: tuple[str, str] = ("SEX_F", "SEX_M")


@dataclasses.dataclass(frozen=True)
class LabSpec:
    """A lab test and its public reference range (values outside give LOW/HIGH tokens).

    Attributes:
      name: short upper-case name used in tokens, e.g. ``"HBA1C"``.
      unit: unit of the values.
      low: values below are ``LOW``; ``None`` means the test has no LOW bin.
      high: values at or above are ``HIGH``.
    """

    name: str
    unit: str
    low: float | None
    high: float

    @property
    def bins(self) -> tuple[str, ...]:
        return ("NORMAL", "HIGH") if self.low is None else ("LOW", "NORMAL", "HIGH")

    def tokens(self) -> tuple[str, ...]:
        return tuple(f"LAB_{self.name}_{b}" for b in self.bins)


LABS: tuple[LabSpec, ...] = (
    LabSpec("HBA1C", "%", 4.0, 6.5),
    LabSpec("CREATININE", "mg/dL", 0.6, 1.3),
    LabSpec("HEMOGLOBIN", "g/dL", 12.0, 17.5),
    LabSpec("LDL", "mg/dL", 50.0, 160.0),
    LabSpec("PSA", "ng/mL", None, 4.0),
    LabSpec("CEA", "ng/mL", None, 5.0),
)


@dataclasses.dataclass(frozen=True)
class CodeHierarchy:
    """The ancestors of a code: ``chapter`` (e.g. ``"2"``), ``block``, ``category``, ``code``."""

    chapter: str
    block: str
    category: str
    code: str


def _check_code(code: object) -> str:
    # Some categories share their name with a one-category block (``C50``, ``Z17``), so
    # the test is "is a category or below", not "is not a block".
    if not isinstance(code, str) or not _icd.is_valid_item(code) or not (
            _icd.is_category_or_subcategory(code) or _icd.is_extended_subcategory(code)):
        raise ValueError(f"code {code!r} is not an ICD-10-CM category or code")
    return _icd.add_dot(code) if "." not in code and len(code) > 3 else code


def hierarchy(code: str) -> CodeHierarchy:
    """The chapter, block and category of an ICD-10-CM code.

    Args:
      code: a category or code, with or without the dot (``"C50.911"`` or ``"C50911"``).

    Returns:
      A ``CodeHierarchy``.

    Raises:
      ValueError: naming the code if it is not an ICD-10-CM category or code.

    Example:
      >>> hierarchy("E11.22")
      CodeHierarchy(chapter='4', block='E08-E13', category='E11', code='E11.22')
    """
    code = _check_code(code)
    ancestors = [code, *_icd.get_ancestors(code)]
    return CodeHierarchy(chapter=ancestors[-1], block=ancestors[-2], category=code[:3], code=code)


def description(code: str) -> str:
    """The official description of a chapter, block, category or code; ``ValueError`` if unknown."""
    if not isinstance(code, str) or not _icd.is_valid_item(code):
        raise ValueError(f"code {code!r} is not an ICD-10-CM item")
    return _icd.get_description(code)


def leaves(category: str) -> tuple[str, ...]:
    """All billable leaf codes under a category (the category itself if it is a leaf)."""
    category = _check_code(category)
    if _icd.is_leaf(category):
        return (category,)
    return tuple(c for c in _icd.get_descendants(category)
                 if _icd.is_leaf(c) and _icd.is_category_or_subcategory(c))


def cancer_subtype_leaves(subtype: str) -> tuple[str, ...]:
    """The real leaf codes of one of ``SUBTYPE_NAMES``; ``ValueError`` for another name."""
    if subtype not in CANCER_SUBTYPES:
        raise ValueError(f"subtype must be one of {SUBTYPE_NAMES}, got {subtype!r}")
    return tuple(leaf for category in CANCER_SUBTYPES[subtype] for leaf in leaves(category))


def subtype_of_code(code: str) -> str | None:
    """The cancer subtype a code belongs to, or ``None`` (``ValueError`` for a non-code)."""
    category = hierarchy(code).category
    for subtype, categories in CANCER_SUBTYPES.items():
        if category in categories:
            return subtype
    return None


def age_token(age: float) -> str:
    """The age-bin token of an age in years (>= 18)."""
    for low, high in AGE_BINS:
        if age >= low and (high is None or age < high + 1):
            return _age_name(low, high)
    raise ValueError(f"age must be >= {AGE_BINS[0][0]} years, got {age!r}")


def _age_name(low: int, high: int | None) -> str:
    return f"AGE_{low}_PLUS" if high is None else f"AGE_{low}_{high}"


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """A fixed token vocabulary; id 0 is padding.

    Attributes:
      tokens: token strings by id; ``tokens[0] == "<PAD>"``; codes are dotted ICD-10-CM codes.
      is_code: ``[V]`` bool, True for ICD-10-CM codes.
      family: ``[V]`` family of each token: ``"pad"``, ``"age"``, ``"sex"``, ``"lab:NAME"`` or
        ``"code"``. A record holds exactly one age and one sex token and at most one token
        per lab family, which attacks may use as public structure.
      levels: ``[V, 4]`` int32 ids of ``(chapter, block, category, code)`` for codes (ids
        into ``level_names``), ``-1`` for other tokens.
      level_names: for each of the four levels, the names its ids refer to.
      subtype: ``[V]`` int32 index into ``SUBTYPE_NAMES`` for cancer codes, ``-1`` otherwise.
    """

    tokens: tuple[str, ...]
    is_code: np.ndarray
    family: tuple[str, ...]
    levels: np.ndarray
    level_names: tuple[tuple[str, ...], ...]
    subtype: np.ndarray
    _index: dict = dataclasses.field(repr=False)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        """The id of a token; ``ValueError`` naming it if it is not in the vocabulary."""
        try:
            return self._index[token]
        except (KeyError, TypeError):
            raise ValueError(f"token {token!r} is not in the public vocabulary "
                             f"({self.size} tokens; codes are dotted, e.g. 'C50.911')") from None

    def ids(self, tokens) -> np.ndarray:
        """Ids of a sequence of tokens as int32; ``ValueError`` naming the first unknown one."""
        return np.array([self.id(token) for token in tokens], dtype=np.int32)

    def token(self, token_id: int) -> str:
        """The token of an id; ``ValueError`` if the id is out of range."""
        if not 0 <= int(token_id) < self.size:
            raise ValueError(f"token id {token_id!r} is outside [0, {self.size - 1}]")
        return self.tokens[int(token_id)]

    def family_ids(self, family: str) -> np.ndarray:
        """Ids of every token of a family, e.g. ``"age"`` or ``"lab:HBA1C"``."""
        ids = np.flatnonzero(np.asarray(self.family) == family).astype(np.int32)
        if ids.size == 0:
            raise ValueError(f"family {family!r} is not in the vocabulary; families are "
                             f"{sorted(set(self.family))}")
        return ids


@functools.lru_cache(maxsize=1)
def public_vocabulary() -> Vocabulary:
    """The fixed public vocabulary (deterministic; about 2,300 tokens).

    Order: padding, age bins, sex, lab bins, then every leaf of chapter 2 (Neoplasms) and
    of ``CHRONIC_CATEGORIES``, sorted by code.

    Returns:
      The ``Vocabulary`` (cached: every call returns the same object).
    """
    special = [PAD_TOKEN] + [_age_name(lo, hi) for lo, hi in AGE_BINS] + list(SEX_TOKENS)
    families = ["pad"] + ["age"] * len(AGE_BINS) + ["sex"] * len(SEX_TOKENS)
    for lab in LABS:
        special += lab.tokens()
        families += [f"lab:{lab.name}"] * len(lab.bins)
    # Nested blocks such as ``C00-C75`` have no children in the release and count as
    # leaves there, so leaves are also required to be codes.
    codes = {c for c in _icd.get_descendants(NEOPLASM_CHAPTER)
             if _icd.is_leaf(c) and _icd.is_category_or_subcategory(c)}
    for category in CHRONIC_CATEGORIES:
        codes.update(leaves(category))
    codes = sorted(codes)
    tokens = tuple(special + codes)
    chains = [hierarchy(code) for code in codes]
    level_names, level_ids = [], []
    for field in ("chapter", "block", "category", "code"):
        names = sorted({getattr(chain, field) for chain in chains})
        lookup = {name: i for i, name in enumerate(names)}
        level_names.append(tuple(names))
        level_ids.append([lookup[getattr(chain, field)] for chain in chains])
    levels = np.full((len(tokens), 4), -1, dtype=np.int32)
    levels[len(special):] = np.array(level_ids, dtype=np.int32).T
    subtype_of_category = {cat: i for i, cats in enumerate(CANCER_SUBTYPES.values()) for cat in cats}
    subtype = np.array([-1] * len(special) + [subtype_of_category.get(c[:3], -1) for c in codes], np.int32)
    is_code = np.zeros(len(tokens), dtype=bool)
    is_code[len(special):] = True
    for array in (levels, subtype, is_code):
        array.setflags(write=False)
    return Vocabulary(tokens=tokens, is_code=is_code, family=tuple(families + ["code"] * len(codes)),
                      levels=levels, level_names=tuple(level_names), subtype=subtype,
                      _index={token: i for i, token in enumerate(tokens)})


# Known comorbidity and presentation associations, as approximate lifts
# P(a, b) / (P(a) P(b)) from the clinical literature; group names are categories or
# non-code tokens. Approximate by design: this is the public knowledge an attacker has,
# not the generator of any cohort.
_COLORECTAL = ("C18", "C19", "C20")
_LYMPHOMA = CANCER_SUBTYPES["lymphoma"]
_ALL_CANCERS = tuple(cat for cats in CANCER_SUBTYPES.values() for cat in cats)
ASSOCIATIONS: tuple[tuple[tuple[str, ...], tuple[str, ...], float], ...] = (
    (("E11",), ("N18",), 2.5), (("E11",), ("I10",), 2.0), (("N18",), ("I10",), 2.5),
    (("E11",), ("E78",), 2.0), (("E11",), ("E66",), 2.5), (("I10",), ("E78",), 1.8),
    (("I10",), ("I50",), 2.0), (("I48",), ("I50",), 3.0), (("I25",), ("I50",), 2.5),
    (("I25",), ("E78",), 2.0), (("I25",), ("I10",), 1.8), (("J44",), ("C34",), 3.0),
    (("J44",), ("F17",), 3.5), (("F17",), ("C34",), 4.0), (("F17",), ("C67",), 2.5),
    (("F32", "F33"), ("C25", "C34"), 1.8), (("E11",), ("C25",), 2.0), (("E66",), _COLORECTAL, 1.5),
    (("E66",), ("C50",), 1.3), (("C61",), ("N40",), 2.0), (("C50",), ("Z17",), 5.0),
    (("C50",), ("N63",), 4.0), (("C50",), ("Z90",), 3.0), (("C34",), ("R05",), 3.0),
    (("C67",), ("R31",), 4.0), (("C25",), ("R17",), 4.0), (_LYMPHOMA, ("R59",), 3.0),
    (_LYMPHOMA, ("R61",), 2.0), (("C43",), ("D22",), 3.0), (_COLORECTAL, ("D12",), 3.0),
    (_COLORECTAL, ("K92",), 2.0), (_COLORECTAL, ("D50",), 2.0), (_ALL_CANCERS, ("Z51",), 2.0),
    (_ALL_CANCERS, ("D70",), 2.0), (_ALL_CANCERS, ("D63",), 2.0), (_ALL_CANCERS, ("C77", "C78", "C79"), 2.0),
    (_ALL_CANCERS, ("R53",), 1.5), (("N18",), ("D63",), 2.0), (("N18",), ("E87",), 2.0),
    (("N18",), ("D64",), 2.0), (("E11",), ("LAB_HBA1C_HIGH",), 5.0),
    (("N18",), ("LAB_CREATININE_HIGH",), 5.0), (("D63", "D64", "D50"), ("LAB_HEMOGLOBIN_LOW",), 3.0),
    (_LYMPHOMA, ("LAB_HEMOGLOBIN_LOW",), 1.5), (("E78",), ("LAB_LDL_HIGH",), 3.0),
    (("C61",), ("LAB_PSA_HIGH",), 4.0), (_COLORECTAL, ("LAB_CEA_HIGH",), 3.0),
    (("C25",), ("LAB_CEA_HIGH",), 2.0), (("C61", "N40"), ("SEX_M",), 2.0), (("C50",), ("SEX_F",), 2.0),
)


@dataclasses.dataclass(frozen=True)
class CooccurrencePrior:
    """A public co-occurrence prior between groups of tokens.

    Attributes:
      group_of_token: ``[V]`` int32 group of each token (a code's category, or the token
        itself for non-code tokens); ``-1`` for padding.
      group_names: names of the groups.
      log_lift: ``[G, G]`` float32 symmetric log-lift, 0 for unrelated groups.
    """

    group_of_token: np.ndarray
    group_names: tuple[str, ...]
    log_lift: np.ndarray


@functools.lru_cache(maxsize=1)
def cooccurrence_prior() -> CooccurrencePrior:
    """The co-occurrence prior over ``public_vocabulary()``, built from ``ASSOCIATIONS``.

    Returns:
      A ``CooccurrencePrior``; it depends on no cohort.
    """
    vocabulary = public_vocabulary()
    names = [token if not is_code else token[:3]
             for token, is_code in zip(vocabulary.tokens[1:], vocabulary.is_code[1:])]
    group_names = tuple(dict.fromkeys(names))
    lookup = {name: i for i, name in enumerate(group_names)}
    group_of_token = np.array([-1] + [lookup[name] for name in names], dtype=np.int32)
    log_lift = np.zeros((len(group_names), len(group_names)), dtype=np.float32)
    for left, right, lift in ASSOCIATIONS:
        for a in left:
            for b in right:
                if a not in lookup or b not in lookup:
                    raise ValueError(f"association ({a!r}, {b!r}) names a group outside the vocabulary")
                log_lift[lookup[a], lookup[b]] = log_lift[lookup[b], lookup[a]] = math.log(lift)
    for array in (group_of_token, log_lift):
        array.setflags(write=False)
    return CooccurrencePrior(group_of_token=group_of_token, group_names=group_names, log_lift=log_lift)
