"""Consistency rules for reconstructed EHR records, and the exfiltration precision they change.

Measured on 2,000-record cohorts (seeds 0 and 1) against the scenario's public table
(``scenario_attacks.public_cooccurrence(64)``, 20,000 records on a key of its own): the
rules reject 61 and 65 real records (3.0-3.3 %), 57 and 64 of them by the sex edit (the
generator draws its background codes without regard to sex, e.g. D29.20 in a woman), 4
and 1 by the co-occurrence edit."""

import dataclasses

import numpy as np
import pytest

from fedpriv.attacks import consistency
from fedpriv.data.ehr import EHRCohortConfig, make_ehr_cohort
from fedpriv.public import icd10
from fedpriv.scenario_attacks import exfiltration_scores


def _check(rule, *tokens, **fields):
    record = dataclasses.replace(consistency.record_from_tokens(tokens), **fields)
    return rule.check(record)


@pytest.mark.parametrize("tokens, rejected", [
    (("O80", "SEX_M"), True), (("O80", "SEX_F"), False), (("O80",), False),  # no sex token: nothing to check
    (("C61", "SEX_F"), True), (("C61", "SEX_M"), False), (("N40.1", "SEX_F"), True),
    (("C53.9", "SEX_M"), True), (("C56.1", "SEX_M"), True), (("C56.1", "SEX_F"), False),
    (("C50.911", "SEX_M"), True), (("C50.921", "SEX_M"), False), (("C50.921", "SEX_F"), True),
    (("C34.90", "I10", "SEX_F"), False), (("C61", "SEX_F", "SEX_M"), False),  # two sexes: one_per_family's call
])
def test_sex_edit(tokens, rejected):
    assert (_check(consistency.SexEdit(), *tokens) is not None) is rejected


@pytest.mark.parametrize("tokens, age, rejected", [
    (("P07.0",), (40, 40), True), (("P07.0",), (0, 0), False), (("P07.0", "AGE_40_49"), None, True),
    (("O80", "AGE_60_69"), None, True), (("O80", "AGE_50_59"), None, False),  # the bin overlaps 12-55
    (("O80", "AGE_30_39"), None, False), (("O80",), (10, 10), True), (("Z3A.39", "AGE_80_PLUS"), None, True),
    (("C34.90", "AGE_80_PLUS"), None, False),
])
def test_age_edit(tokens, age, rejected):
    fields = {} if age is None else {"age": age}
    assert (_check(consistency.AgeEdit(), *tokens, **fields) is not None) is rejected


def test_record_reads_demographics_off_its_tokens():
    record = consistency.record_from_tokens(["<PAD>", "C61", "AGE_80_PLUS", "SEX_M", "LAB_PSA_HIGH", "C61"])
    assert record == consistency.ReconstructedRecord(codes=("C61",), tokens=("AGE_80_PLUS", "SEX_M", "LAB_PSA_HIGH"),
                                                     sex="M", age=(80, None))
    assert consistency.record_from_tokens(["AGE_60_69", "AGE_70_79"]).age is None
    rule = consistency.OnePerFamily()
    assert rule.check(consistency.record_from_tokens(["AGE_60_69", "AGE_70_79", "SEX_F"])) == "several tokens of AGE"
    assert "LAB_HBA1C" in rule.check(consistency.record_from_tokens(["LAB_HBA1C_HIGH", "LAB_HBA1C_NORMAL"]))
    assert rule.check(consistency.record_from_tokens(["LAB_HBA1C_HIGH", "LAB_LDL_HIGH", "SEX_F"])) is None


@pytest.fixture(scope="module")
def public_table():
    reference = make_ehr_cohort(EHRCohortConfig(num_records=4000, max_codes=48), np.random.default_rng(7))
    return consistency.PublicCooccurrence.from_token_ids(reference.codes, reference.vocabulary)


def test_public_table_counts_pairs_of_categories(public_table):
    table, index = public_table, {name: g for g, name in enumerate(public_table.group_names)}
    assert table.num_records == 4000 and table.group_names[:2] == ("AGE_18_29", "AGE_30_39")
    assert table.pair_counts[index["C61"], index["SEX_F"]] == 0 < table.pair_counts[index["C61"], index["SEX_M"]]
    assert table.pair_counts[index["C50"], index["C61"]] == 0
    assert np.array_equal(np.diag(table.pair_counts), table.record_counts)
    # An oracle on one pair: count the records holding both groups directly.
    tiny = np.array([[icd10.public_vocabulary().id("I10"), icd10.public_vocabulary().id("E11.9"), 0],
                     [icd10.public_vocabulary().id("I10"), 0, 0]])
    small = consistency.PublicCooccurrence.from_token_ids(tiny, icd10.public_vocabulary())
    lookup = {name: g for g, name in enumerate(small.group_names)}
    assert small.pair_counts[lookup["I10"], lookup["E11"]] == 1 and small.record_counts[lookup["I10"]] == 2


def test_cooccurrence_edit_rejects_only_pairs_public_data_rule_out(public_table):
    rule = consistency.CooccurrenceEdit(public_table)
    assert "C50+C61" in _check(rule, "C50.911", "C61", "SEX_F")  # two cancer subtypes in one record
    assert "SEX_F+C61" in _check(rule, "C61", "SEX_F")
    assert _check(rule, "C34.90", "J44.9", "F17.210", "SEX_M", "AGE_70_79") is None
    assert _check(rule, "C34.90", "O80") is None  # O80 is not in the public table: no evidence
    with pytest.raises(ValueError, match="min_expected"):
        consistency.CooccurrenceEdit(public_table, min_expected=0.0)


def test_verify_names_each_rule_that_rejects(public_table):
    records = [consistency.record_from_tokens(tokens) for tokens in (
        ("C50.911", "Z17.0", "SEX_F", "AGE_50_59"), ("O80", "SEX_M", "AGE_60_69"), ("C61", "SEX_M", "AGE_70_79"))]
    result = consistency.verify(records, consistency.default_rules(public_table))
    assert result.kept.tolist() == [True, False, True] and result.rejected.tolist() == [1]
    assert [reason.split(":")[0] for reason in result.reasons[1]] == ["sex_edit", "age_edit"]
    with pytest.raises(ValueError, match="name"):
        consistency.verify(records, [object()])


def test_rules_keep_nearly_all_real_records(public_table):
    private = make_ehr_cohort(EHRCohortConfig(num_records=300, max_codes=48), np.random.default_rng(0))
    tokens = [[private.vocabulary.token(i) for i in np.unique(row) if i] for row in private.codes]
    result = consistency.verify([consistency.record_from_tokens(t) for t in tokens],
                                consistency.default_rules(public_table))
    # The generator follows the same MCE edits (fedpriv.public.code_edits), so only the co-occurrence
    # edit, a statistical rule, may reject a real record: measured 1 of 300 (C50+D50, expected 11).
    assert result.kept.mean() >= 0.99
    assert all(reason.startswith("public_cooccurrence") for reasons in result.reasons for reason in reasons)


@dataclasses.dataclass(frozen=True)
class _Cohort:
    inputs: np.ndarray
    vocabulary: icd10.Vocabulary
    vocabulary_size: int
    input_shape: tuple


def test_exfiltration_precision_with_and_without_the_filter():
    vocabulary = icd10.public_vocabulary()
    patients = [("C61", "N40.1", "I10", "SEX_M", "AGE_70_79"), ("C50.911", "Z17.0", "E66.9", "SEX_F", "AGE_50_59")]
    inputs = np.array([np.pad(vocabulary.ids(p), (0, 11)) for p in patients], np.int32)
    cohort = _Cohort(inputs, vocabulary, vocabulary.size, (16,))
    recovered = [patients[0],  # exact: correct, kept
                 patients[1][:4] + ("AGE_60_69",),  # one wrong token of six: Jaccard 4/6, wrong, kept
                 ("C61", "N40.1", "I10", "SEX_M", "AGE_70_79", "SEX_F"),  # Jaccard 5/6 (correct), two sexes: rejected
                 ("C61", "SEX_F", "AGE_30_39"),  # nobody's, prostate in a woman: rejected
                 ()]  # nothing recovered: not a record
    present = np.zeros((len(recovered), vocabulary.size), bool)
    for row, tokens in zip(present, recovered):
        row[vocabulary.ids(tokens)] = True
    scores = exfiltration_scores(present, cohort)
    assert scores == {"attack.exfiltrated_records": 4, "attack.exfiltration_precision": 0.5,
                      "attack.exfiltration_precision_filtered": 0.5, "attack.consistency_rejected": 2,
                      "attack.consistency_false_rejections": 1}
