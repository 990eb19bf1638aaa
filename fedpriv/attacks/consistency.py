"""Consistency verification of reconstructed EHR records before the attacker keeps them.

The attacker's last stage (model probing -> gradient inversion -> semantic reconstruction
-> verification): a reconstructed record is a set of tokens (ICD-10-CM codes plus the
age-bin, sex and lab-bin tokens of ``fedpriv.public.icd10``); each rule below reads it,
with the demographics its tokens give, and either passes it or names why the record is
implausible. ``verify`` runs every rule and returns which records are kept. The rules use
public knowledge only: official code edits and public co-occurrence statistics, never the
victims' records.

Rules (each a small object with a ``name`` and ``check(record) -> reason or None``):

* ``SexEdit``: codes for one sex's organs in a record of the other sex (CMS MCE sex edit).
* ``AgeEdit``: perinatal codes (chapter 16, ``P``) outside age 0 and maternity codes
  (chapter 15, ``O``; ``Z3A``) outside ages 12-55 (CMS MCE age edits).
* ``OnePerFamily``: more than one age, sex or same-lab token (the public record format).
* ``CooccurrenceEdit``: a pair of code categories (or demographic tokens) that a public
  table never shows together although their frequencies predict that it should.

References:
  Centers for Medicare & Medicaid Services, "Definitions of Medicare Code Edits" (MCE),
  ICD-10 MCE v40 (FY 2023), edit 3 "Age conflict" (Perinatal/Newborn: age 0; Maternity:
  ages 12-55) and edit 4 "Sex conflict" (diagnoses for females only / for males only).
  CDC NCHS, "ICD-10-CM Official Guidelines for Coding and Reporting FY 2023", sections
  I.C.15.a (chapter 15 codes only on the maternal record) and I.C.16.a (chapter 16 codes
  only on the newborn record; I.C.16.a.4 allows them later in life when the perinatal
  condition persists, so the age-0 edit can reject a real record).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import scipy.sparse

from fedpriv.public import icd10
from fedpriv.public.code_edits import AGE_LIMITS, FEMALE_ONLY_PREFIXES, MALE_ONLY_PREFIXES

_DEMOGRAPHIC_PREFIXES = ("AGE_", "SEX_", "LAB_")


@dataclasses.dataclass(frozen=True)
class ReconstructedRecord:
    """One reconstructed record as the rules read it.

    Attributes:
      codes: ICD-10-CM codes, dotted (``"C50.911"``).
      tokens: the other tokens (``"AGE_60_69"``, ``"SEX_F"``, ``"LAB_PSA_HIGH"``).
      sex: ``"F"`` or ``"M"`` when the tokens give exactly one sex, else ``None``.
      age: ``(youngest, oldest)`` years (``oldest`` ``None`` = open) when they give exactly
        one age, else ``None``.
    """

    codes: tuple[str, ...]
    tokens: tuple[str, ...] = ()
    sex: str | None = None
    age: tuple[int, int | None] | None = None

    def __post_init__(self):
        if self.sex not in (None, "F", "M"):
            raise ValueError(f"sex must be 'F', 'M' or None, got {self.sex!r}")


def record_from_tokens(tokens: Sequence[str]) -> ReconstructedRecord:
    """Splits a token set into codes and demographic tokens and reads sex and age off them."""
    tokens = tuple(dict.fromkeys(token for token in tokens if token != icd10.PAD_TOKEN))
    demographic = tuple(t for t in tokens if t.startswith(_DEMOGRAPHIC_PREFIXES))
    sexes = [t for t in demographic if t.startswith("SEX_")]
    ages = [t for t in demographic if t.startswith("AGE_")]
    sex = sexes[0][len("SEX_"):] if len(sexes) == 1 else None
    age = None
    if len(ages) == 1:
        low, high = ages[0][len("AGE_"):].split("_")
        age = (int(low), None if high == "PLUS" else int(high))
    return ReconstructedRecord(codes=tuple(t for t in tokens if t not in demographic), tokens=demographic,
                               sex=sex, age=age)


class ConsistencyRule(Protocol):
    """A plausibility rule: ``check`` returns why the record is rejected, or ``None``."""

    name: str

    def check(self, record: ReconstructedRecord) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class SexEdit:
    """Rejects codes of one sex's organs (or pregnancy) in a record of the other sex.

    Source: CMS MCE edit 4 "Sex conflict" (see the module's references); prefixes in
    ``FEMALE_ONLY_PREFIXES`` / ``MALE_ONLY_PREFIXES``. Needs the record's sex token.
    """

    female_only: tuple[str, ...] = FEMALE_ONLY_PREFIXES
    male_only: tuple[str, ...] = MALE_ONLY_PREFIXES
    name: str = "sex_edit"

    def check(self, record: ReconstructedRecord) -> str | None:
        if record.sex is None:
            return None
        forbidden = self.male_only if record.sex == "F" else self.female_only
        conflicts = [code for code in record.codes if code.startswith(forbidden)]
        return f"{', '.join(conflicts)} in a record of sex {record.sex}" if conflicts else None


@dataclasses.dataclass(frozen=True)
class AgeEdit:
    """Rejects codes whose MCE age range does not meet the record's age bin.

    Source: CMS MCE edit 3 "Age conflict": perinatal/newborn diagnoses at age 0, maternity
    diagnoses at ages 12-55 (``AGE_LIMITS``). A bin that overlaps the range passes.
    """

    limits: tuple[tuple[str, int, int], ...] = AGE_LIMITS
    name: str = "age_edit"

    def check(self, record: ReconstructedRecord) -> str | None:
        if record.age is None:
            return None
        youngest, oldest = record.age
        conflicts = [f"{code} (ages {low}-{high})" for code in record.codes for prefix, low, high in self.limits
                     if code.startswith(prefix) and (youngest > high or (oldest is not None and oldest < low))]
        return f"{', '.join(conflicts)} at age {youngest}-{'' if oldest is None else oldest}" if conflicts else None


@dataclasses.dataclass(frozen=True)
class OnePerFamily:
    """Rejects records with two age tokens, two sex tokens or two bins of one lab.

    Source: the public record format (``fedpriv.public.icd10.Vocabulary.family``): a
    record holds one age bin, one sex and at most one bin per lab test.
    """

    name: str = "one_per_family"

    def check(self, record: ReconstructedRecord) -> str | None:
        families = ["_".join(t.split("_")[:2]) if t.startswith("LAB_") else t.split("_")[0] for t in record.tokens]
        repeated = sorted({family for family in families if families.count(family) > 1})
        return f"several tokens of {', '.join(repeated)}" if repeated else None


def token_group(token: str) -> str:
    """The co-occurrence group of a token: a code's category, any other token itself
    (the grouping of ``fedpriv.public.icd10.cooccurrence_prior``)."""
    return token if token.startswith(_DEMOGRAPHIC_PREFIXES) else token[:3]


@dataclasses.dataclass(frozen=True)
class PublicCooccurrence:
    """How often groups of tokens occur, alone and in pairs, in a public table of records.

    The attacker estimates it from public data: published co-occurrence counts of
    diagnosis categories, age and sex (e.g. the cross-tabulations that registries such as
    SEER or HCUP publish). In fedpriv the stand-in is a public reference cohort drawn by
    the EHR generator with a seed of its own (built by the scenario, which may see
    ``fedpriv.data``; this module only reads token ids).

    Attributes:
      group_names: the groups (``token_group``), index = row of the counts.
      record_counts: ``[G]`` records holding each group.
      pair_counts: ``[G, G]`` records holding both groups.
      num_records: records in the table.
    """

    group_names: tuple[str, ...]
    record_counts: np.ndarray
    pair_counts: np.ndarray
    num_records: int

    @classmethod
    def from_token_ids(cls, records: np.ndarray, vocabulary: icd10.Vocabulary) -> PublicCooccurrence:
        """Counts from ``records [N, M]`` token ids over ``vocabulary`` (0 = padding)."""
        records = np.asarray(records)
        if records.ndim != 2 or records.shape[0] < 1:
            raise ValueError(f"records must be [N >= 1, M] token ids, got shape {records.shape}")
        names = tuple(dict.fromkeys(token_group(token) for token in vocabulary.tokens[1:]))
        lookup = {name: g for g, name in enumerate(names)}
        group_of_id = np.array([-1] + [lookup[token_group(t)] for t in vocabulary.tokens[1:]], np.int64)
        groups = group_of_id[records]
        real = groups >= 0  # padding belongs to no group
        present = scipy.sparse.csr_matrix(
            (np.ones(int(real.sum())), (np.nonzero(real)[0], groups[real])), shape=(records.shape[0], len(names)))
        present.data[:] = 1.0  # a group coded on several visits counts once per record
        return cls(group_names=names, record_counts=np.rint(np.asarray(present.sum(axis=0))).astype(np.int64).ravel(),
                   pair_counts=np.rint((present.T @ present).toarray()).astype(np.int64),
                   num_records=int(records.shape[0]))


@dataclasses.dataclass(frozen=True)
class CooccurrenceEdit:
    """Rejects a record holding two groups the public table never shows together although
    independence predicts at least ``min_expected`` such records there.

    A cancer subtype with another subtype, a subtype with the other sex (prostate cancer in
    a woman), or a comorbidity with a lab bin that contradicts it are what this catches;
    rare groups are never judged (their expected count is small), so it rejects only what
    the public data rule out. Under independence a pair expected ``m`` times is absent with
    probability ``exp(-m)`` (``exp(-10) = 5e-5`` at the default), the chance a truly
    possible, independent pair is wrongly ruled out.

    Attributes:
      table: the public co-occurrence counts.
      min_expected: the expected count ``n_a n_b / N`` from which an unseen pair is ruled out, > 0.
    """

    table: PublicCooccurrence
    min_expected: float = 10.0
    name: str = "public_cooccurrence"

    def __post_init__(self):
        if not self.min_expected > 0:
            raise ValueError(f"min_expected must be a number > 0, got {self.min_expected!r}")

    def check(self, record: ReconstructedRecord) -> str | None:
        lookup = {name: g for g, name in enumerate(self.table.group_names)}
        # Groups absent from the public table have no evidence either way.
        groups = np.array(sorted({lookup[g] for g in map(token_group, record.codes + record.tokens) if g in lookup}),
                          np.int64)
        counts = self.table.record_counts[groups].astype(np.float64)
        expected = np.outer(counts, counts) / self.table.num_records
        unseen = (self.table.pair_counts[np.ix_(groups, groups)] == 0) & (expected >= self.min_expected)
        first, second = np.nonzero(np.triu(unseen, k=1))
        names = [f"{self.table.group_names[groups[a]]}+{self.table.group_names[groups[b]]} "
                 f"(expected {expected[a, b]:.0f})" for a, b in zip(first, second)]
        return f"never together in the public table: {', '.join(names)}" if names else None


def default_rules(table: PublicCooccurrence | None = None, *, min_expected: float = 10.0) -> tuple:
    """The official edits and the record format, plus the co-occurrence edit given a table."""
    rules = (SexEdit(), AgeEdit(), OnePerFamily())
    return rules if table is None else (*rules, CooccurrenceEdit(table, min_expected))


@dataclasses.dataclass(frozen=True)
class Verification:
    """What ``verify`` decided.

    Attributes:
      kept: ``[R]`` bool, the records that pass every rule.
      reasons: per record, ``"rule: why"`` for each rule it fails (empty when kept).
    """

    kept: np.ndarray
    reasons: tuple[tuple[str, ...], ...]

    @property
    def rejected(self) -> np.ndarray:
        """Indices of the rejected records."""
        return np.flatnonzero(~self.kept)


def verify(records: Sequence[ReconstructedRecord], rules: Sequence[ConsistencyRule]) -> Verification:
    """Runs every rule on every record: a record is kept when no rule rejects it.

    Args:
      records: the reconstructed records (``record_from_tokens`` builds them from tokens).
      rules: e.g. ``default_rules(table)``.

    Returns:
      A ``Verification`` with the kept mask and each record's reasons.

    Raises:
      ValueError: if a rule lacks a ``name`` or ``check``, before any record is read.
    """
    for rule in rules:
        if not isinstance(getattr(rule, "name", None), str) or not callable(getattr(rule, "check", None)):
            raise ValueError(f"rules must each have a `name` and a `check(record)`, got {rule!r}")
    reasons = tuple(tuple(f"{rule.name}: {why}" for rule in rules if (why := rule.check(record)) is not None)
                    for record in records)
    return Verification(kept=np.array([not why for why in reasons], bool), reasons=reasons)
