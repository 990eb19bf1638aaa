"""Which ICD-10-CM codes fit which patients: the sex and age edits of the CMS Medicare Code Editor.

Public knowledge, so both sides read it: the EHR generator never codes a patient with a
diagnosis their sex or age excludes, and the attacker's consistency filter
(``fedpriv.attacks.consistency``) rejects reconstructed records that do.

References:
  Centers for Medicare & Medicaid Services, "Definitions of Medicare Code Edits" (MCE),
  ICD-10 MCE v40 (FY 2023), edit 3 "Age conflict" (Perinatal/Newborn: age 0; Maternity:
  ages 12-55) and edit 4 "Sex conflict" (diagnoses for females only / for males only).
  The lists below are the part of edit 4's lists in the neoplasm, genitourinary and
  pregnancy chapters (and Z3A, weeks of gestation), written as code prefixes.
"""

from __future__ import annotations


def _category_range(first: str, last: str) -> tuple[str, ...]:
    """Three-character categories ``first..last`` sharing a letter (e.g. ``N70..N98``)."""
    letter = first[0]
    return tuple(f"{letter}{number:02d}" for number in range(int(first[1:]), int(last[1:]) + 1))


_BREAST_SITES = "012345689"  # C50.x: nipple, central, quadrants, axillary tail, overlapping, unspecified
# The breast codes C50.x1- name the female breast and C50.x2- the male breast in their official titles.
FEMALE_ONLY_PREFIXES: tuple[str, ...] = (
    "O", "Z3A", *_category_range("C51", "C58"), "D06", "D07.0", "D07.1", "D07.2", "D07.3",
    *_category_range("D25", "D28"), "D39", *_category_range("N70", "N98"),
    *(f"C50.{site}1" for site in _BREAST_SITES))
MALE_ONLY_PREFIXES: tuple[str, ...] = (
    *_category_range("C60", "C63"), "D07.4", "D07.5", "D07.6", "D29", "D40", *_category_range("N40", "N53"),
    *(f"C50.{site}2" for site in _BREAST_SITES))
# (code prefix, youngest age, oldest age) of the MCE age edits: perinatal codes at age 0,
# maternity codes (and weeks of gestation) at ages 12-55.
AGE_LIMITS: tuple[tuple[str, int, int], ...] = (("P", 0, 0), ("O", 12, 55), ("Z3A", 12, 55))


def fits_sex(code: str, male: bool) -> bool:
    """Whether a patient of that sex may carry ``code`` (dotted, e.g. ``"C61"``)."""
    return not code.startswith(FEMALE_ONLY_PREFIXES if male else MALE_ONLY_PREFIXES)


def age_restricted(code: str) -> bool:
    """Whether an MCE age edit limits ``code`` to some ages."""
    return code.startswith(tuple(prefix for prefix, _, _ in AGE_LIMITS))
