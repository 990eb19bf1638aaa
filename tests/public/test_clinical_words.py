"""The public clinical word vocabulary: deterministic, covering, strict when asked."""

import numpy as np
import pytest
import simple_icd_10_cm as icd

from fedpriv.public.clinical_words import (CLS_ID, PAD_ID, SPECIAL_TOKENS, SUBTYPE_NAMES, UNK_ID,
                                           ClinicalVocabulary, cancer_codes, clinical_vocabulary,
                                           detokenize, split_words, tokenize)


def test_vocabulary_is_a_few_thousand_sorted_unique_words_after_the_special_tokens():
    vocabulary = clinical_vocabulary()
    assert vocabulary.words[:3] == SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[CLS]")
    assert (PAD_ID, UNK_ID, CLS_ID) == (0, 1, 2)
    assert 2000 <= vocabulary.size <= 5000
    words = vocabulary.words[3:]
    assert list(words) == sorted(set(words))  # deterministic order, no repeats
    assert clinical_vocabulary() is vocabulary  # built once


def test_every_word_of_every_cancer_code_description_is_in_the_vocabulary():
    vocabulary = clinical_vocabulary()
    for subtype in SUBTYPE_NAMES:
        codes = cancer_codes(subtype)
        assert len(codes) >= 1
        for code in codes:
            for word in split_words(icd.get_description(code)):
                assert word in vocabulary, (code, word)
    assert "C34.12" in cancer_codes("lung") and "C61" in cancer_codes("prostate")
    assert all(code[:3] in ("C81", "C82", "C83", "C84", "C85") for code in cancer_codes("lymphoma"))


def test_tokenize_splits_punctuation_and_round_trips():
    text = "History of Type 2 diabetes. CT shows mass in upper lobe, left bronchus or lung."
    ids = tokenize(text)
    assert ids.dtype == np.int32
    assert split_words(text)[:6] == ["history", "of", "type", "2", "diabetes", "."]
    assert ids.size == 18 and UNK_ID not in ids and PAD_ID not in ids
    assert detokenize(ids) == " ".join(split_words(text))
    vocabulary = clinical_vocabulary()
    assert vocabulary.words[ids[1]] == "of" and vocabulary.words[ids[12]] == ","


def test_unknown_words_map_to_unk_or_raise_in_strict_mode():
    ids = tokenize("ct shows zorblax")
    assert ids[-1] == UNK_ID and ids[0] != UNK_ID
    with pytest.raises(ValueError, match="'zorblax'"):
        tokenize("ct shows zorblax", strict=True)
    with pytest.raises(ValueError, match="'\\[pad\\]'"):  # special tokens are not words of a note
        clinical_vocabulary().id_of("[pad]", strict=True)


def test_max_len_pads_with_zero_and_truncates():
    padded = tokenize("plan : biopsy", max_len=6)
    assert padded.shape == (6,) and padded[3:].tolist() == [0, 0, 0] and (padded[:3] > 2).all()
    assert tokenize("plan : biopsy and oncology referral", max_len=2).tolist() == padded[:2].tolist()
    assert detokenize(padded) == "plan : biopsy"
    with pytest.raises(ValueError, match="max_len"):
        tokenize("plan", max_len=0)


def test_bad_input_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="ids must be integers in \\[0, "):
        detokenize([3, clinical_vocabulary().size])
    with pytest.raises(ValueError, match="subtype must be one of"):
        cancer_codes("glioma")
    with pytest.raises(ValueError, match="words must be a tuple starting with"):
        ClinicalVocabulary(words=("a", "b"))
    with pytest.raises(ValueError, match="unique"):
        ClinicalVocabulary(words=(*SPECIAL_TOKENS, "a", "a"))
    with pytest.raises(ValueError, match="text must be a str"):
        split_words(3)
