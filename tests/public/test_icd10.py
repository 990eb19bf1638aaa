"""The public ICD-10-CM ontology, vocabulary and co-occurrence prior."""

import math

import numpy as np
import pytest

from fedpriv.public import icd10


def test_hierarchy_of_real_codes():
    assert icd10.hierarchy("E11.22") == icd10.CodeHierarchy(chapter="4", block="E08-E13", category="E11",
                                                            code="E11.22")
    chain = icd10.hierarchy("C50911")  # undotted input is accepted and dotted
    assert (chain.chapter, chain.category, chain.code) == ("2", "C50", "C50.911")
    assert icd10.hierarchy("I10").category == "I10" and icd10.hierarchy("I10").block == "I10-I1A"
    assert icd10.description("C61") == "Malignant neoplasm of prostate"


@pytest.mark.parametrize("bad", ["C00-D49", "C50.999", "XYZ", 42])
def test_unknown_code_is_named(bad):
    with pytest.raises(ValueError, match=str(bad)):
        icd10.hierarchy(bad)


def test_cancer_subtypes_map_to_real_leaves():
    assert icd10.SUBTYPE_NAMES == ("breast", "lung", "colorectal", "prostate", "lymphoma", "pancreas",
                                   "melanoma", "bladder")
    breast = icd10.cancer_subtype_leaves("breast")
    assert len(breast) == 57 and all(code.startswith("C50.") for code in breast)
    assert icd10.cancer_subtype_leaves("prostate") == ("C61",)
    colorectal = icd10.cancer_subtype_leaves("colorectal")
    assert {"C19", "C20", "C18.0"} <= set(colorectal) and len(colorectal) == 12
    assert {code[:3] for code in icd10.cancer_subtype_leaves("lymphoma")} == {"C81", "C82", "C83", "C84", "C85"}
    assert icd10.subtype_of_code("C34.90") == "lung" and icd10.subtype_of_code("E11.9") is None
    with pytest.raises(ValueError, match="kidney"):
        icd10.cancer_subtype_leaves("kidney")


def test_vocabulary_is_fixed_and_looks_up_by_name():
    vocabulary = icd10.public_vocabulary()
    assert vocabulary is icd10.public_vocabulary()
    assert 2000 <= vocabulary.size <= 5000 and vocabulary.size == 2530
    assert vocabulary.tokens[0] == "<PAD>" and len(set(vocabulary.tokens)) == vocabulary.size
    assert vocabulary.id("SEX_F") == 8 and vocabulary.token(vocabulary.id("C50.911")) == "C50.911"
    with pytest.raises(ValueError, match="'Q99.9'"):
        vocabulary.id("Q99.9")
    with pytest.raises(ValueError, match="'C50.999'"):
        vocabulary.ids(["C61", "C50.999"])
    lung = vocabulary.id("C34.90")
    assert vocabulary.subtype[lung] == icd10.SUBTYPE_NAMES.index("lung")
    assert vocabulary.subtype[vocabulary.id("E11.9")] == -1 and vocabulary.subtype[vocabulary.id("SEX_M")] == -1
    chapter, block, category, code = (vocabulary.level_names[i][vocabulary.levels[lung, i]] for i in range(4))
    assert (chapter, block, category, code) == ("2", "C30-C39", "C34", "C34.90")
    assert (vocabulary.levels[vocabulary.id("AGE_60_69")] == -1).all()
    assert vocabulary.family[vocabulary.id("LAB_PSA_HIGH")] == "lab:PSA"
    assert [vocabulary.tokens[i] for i in vocabulary.family_ids("sex")] == ["SEX_F", "SEX_M"]


def test_age_tokens():
    assert icd10.age_token(69.9) == "AGE_60_69" and icd10.age_token(70) == "AGE_70_79"
    assert icd10.age_token(101) == "AGE_80_PLUS"
    with pytest.raises(ValueError, match="17"):
        icd10.age_token(17)


def test_cooccurrence_prior_is_public_and_symmetric():
    prior = icd10.cooccurrence_prior()
    vocabulary = icd10.public_vocabulary()
    assert np.array_equal(prior.log_lift, prior.log_lift.T)
    group = lambda token: prior.group_of_token[vocabulary.id(token)]
    assert group("E11.9") == group("E11.22")  # codes share their category's group
    assert prior.log_lift[group("E11.9"), group("N18.4")] == pytest.approx(math.log(2.5))
    assert prior.log_lift[group("C34.90"), group("F17.210")] == pytest.approx(math.log(4.0))
    assert prior.log_lift[group("C61"), group("LAB_PSA_HIGH")] == pytest.approx(math.log(4.0))
    assert prior.log_lift[group("C43.9"), group("N18.4")] == 0.0
    assert prior.group_of_token[0] == -1
