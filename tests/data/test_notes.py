"""The clinical-notes cohort: real ICD-10-CM wording, site case mix, round data."""

import numpy as np
import pytest
import simple_icd_10_cm as icd

from fedpriv.data.client_data import build_round_data
from fedpriv.data.notes import COMORBIDITY_CODES, NotesConfig, NotesCohort, make_notes_cohort
from fedpriv.public.clinical_words import (CANCER_SUBTYPES, PAD_ID, SUBTYPE_NAMES, UNK_ID,
                                           clinical_vocabulary, split_words, tokenize)


@pytest.fixture(scope="module")
def cohort():
    return make_notes_cohort(NotesConfig(num_records=3000, num_sites=3, max_len=48, case_mix_alpha=0.5),
                             np.random.default_rng(7))


def test_shapes_dtypes_and_determinism(cohort):
    assert cohort.tokens.shape == (3000, 48) and cohort.tokens.dtype == np.int32
    assert cohort.labels.dtype == np.int32 and cohort.site.dtype == np.int32
    assert cohort.input_shape == (48,) and cohort.num_classes == 8 and cohort.class_names == SUBTYPE_NAMES
    config = NotesConfig(num_records=50, num_sites=2, max_len=32)
    first = make_notes_cohort(config, np.random.default_rng(3))
    again = make_notes_cohort(config, np.random.default_rng(3))
    other = make_notes_cohort(config, np.random.default_rng(4))
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert first.texts == again.texts
    assert not np.array_equal(first.tokens, other.tokens)


def test_vocabulary_covers_every_note_and_padding_only_trails(cohort):
    vocabulary = clinical_vocabulary()
    assert cohort.tokens.max() < vocabulary.size
    assert not np.any(cohort.tokens == UNK_ID)
    for text in cohort.texts[:300]:
        assert all(word in vocabulary for word in split_words(text))
    is_pad = cohort.tokens == PAD_ID
    # Once padding starts it never stops: a row is real tokens then zeros.
    assert not np.any(is_pad[:, :-1] & ~is_pad[:, 1:])
    lengths = cohort.lengths
    assert lengths.min() >= 20 and lengths.max() == 48  # long notes are truncated to max_len
    for row in (0, 1, 2):
        np.testing.assert_array_equal(cohort.tokens[row], tokenize(cohort.texts[row], max_len=48))


def test_notes_name_their_real_code_and_details(cohort):
    categories = dict(CANCER_SUBTYPES)
    for text, code, label in zip(cohort.texts[:500], cohort.codes[:500], cohort.labels[:500]):
        assert code[:3] in categories[SUBTYPE_NAMES[label]]
        description = icd.get_description(code).lower()
        assert description.removeprefix("malignant neoplasm of ") in text
        if SUBTYPE_NAMES[label] == "prostate":
            assert (" man " in text or " male " in text) and "woman" not in text
        assert ("history of " in text) != ("no past medical history" in text)
    histories = [t for t in cohort.texts if "history of " in t]
    assert any(icd.get_description("E11.9").lower() in t for t in histories)
    assert all(icd.is_valid_item(code) and icd.is_leaf(code) for code in COMORBIDITY_CODES)


def test_each_site_follows_its_case_mix(cohort):
    for site, members in enumerate(cohort.site_partition()):
        counts = np.bincount(cohort.labels[members], minlength=8)
        expected = cohort.case_mix[site] * members.size
        # Multinomial: every count within 5 standard deviations of its expectation.
        sd = np.sqrt(members.size * cohort.case_mix[site] * (1 - cohort.case_mix[site]))
        assert np.all(np.abs(counts - expected) <= 5 * sd + 1), (site, counts, expected)
    parts = cohort.site_partition()
    assert sorted(np.concatenate(parts).tolist()) == list(range(3000))
    # alpha 0.5 makes sites differ: their case mixes are far apart in total variation.
    assert 0.5 * np.abs(cohort.case_mix[0] - cohort.case_mix[1]).sum() > 0.1
    uniform = make_notes_cohort(NotesConfig(num_records=1600, case_mix="uniform"), np.random.default_rng(1))
    counts = np.bincount(uniform.labels, minlength=8)
    assert np.all(np.abs(counts - 200) < 5 * np.sqrt(1600 * 1 / 8 * 7 / 8))  # balanced labels


def test_sites_write_in_their_own_house_style(cohort):
    starts = [{t.split()[0] == "patient" for t, s in zip(cohort.texts, cohort.site) if s == site}
              for site in range(3)]
    assert starts[0] == {False} and starts[1] == {True} and starts[2] == {False}
    assert all(" with " in t.split(".")[0] for t, s in zip(cohort.texts, cohort.site) if s == 2)


def test_round_data_keeps_token_ids_and_zero_padding(cohort):
    partition = cohort.site_partition()
    data = build_round_data(cohort.tokens, cohort.labels, partition, local_steps=2, batch_size=4,
                            sampling="shuffle", generator=np.random.default_rng(0))
    x = np.asarray(data.examples["x"])
    assert x.dtype == np.int32 and x.shape == (3, 2, 4, 48)
    ids = np.asarray(data.record_ids)
    np.testing.assert_array_equal(x, cohort.tokens[ids])
    full = build_round_data(cohort.tokens[:5], cohort.labels[:5], [np.arange(2), np.arange(2, 5)],
                            local_steps=1, sampling="full", generator=np.random.default_rng(0))
    assert np.all(np.asarray(full.examples["x"])[0, 0, 2] == PAD_ID)  # a padded slot is all padding


@pytest.mark.parametrize("field, value, message", [
    ("num_records", 0, "num_records must be an integer >= 1, got 0"),
    ("num_sites", 1.5, "num_sites must be an integer"),
    ("max_len", 3, "max_len must be an integer >= 4, got 3"),
    ("case_mix", "zipf", "case_mix must be one of"),
    ("case_mix_alpha", 0.0, "case_mix_alpha must be a finite number > 0"),
    ("max_comorbidities", 99, "max_comorbidities must be an integer in \\[0, 16\\]"),
    ("keep_texts", 1, "keep_texts must be a bool"),
    ("name", "", "name must be a non-empty string"),
])
def test_bad_config_is_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        NotesConfig(**{field: value})


def test_bad_cohort_and_generator_are_refused():
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator"):
        make_notes_cohort(NotesConfig(num_records=2), 0)
    with pytest.raises(ValueError, match="labels must be an int32 array"):
        NotesCohort(tokens=np.zeros((2, 4), np.int32), labels=np.zeros(3, np.int32), site=np.zeros(2, np.int32),
                    case_mix=np.ones((1, 8)) / 8, texts=None, codes=None, class_names=SUBTYPE_NAMES, name="x")
    without_texts = make_notes_cohort(NotesConfig(num_records=4, keep_texts=False), np.random.default_rng(0))
    assert without_texts.texts is None and without_texts.tokens.shape == (4, 64)
