"""A word vocabulary for clinical notes, built from public ICD-10-CM descriptions.

Public knowledge (DESIGN §1): the hospitals tokenise their notes with it, and an attacker
who reads token ids off an update maps them back to words with it. The vocabulary is
deterministic: special tokens first, then every word of the ICD-10-CM (2024, via
``simple_icd_10_cm``) descriptions of the neoplasm chapter (C00–D49) and of the
endocrine (E), circulatory (I), respiratory (J), digestive (K) and genitourinary (N)
chapters, where the common comorbidities of cancer patients live, together with the
words of the note templates and the numbers 0–120, sorted alphabetically: 2,481 ids with
the ICD-10-CM release that ``simple_icd_10_cm`` ships.

Tokenisation is lower-case, with every run of letters or digits one word and every other
non-space character (``, . : ( ) -`` ...) a word of its own, so "upper lobe, left bronchus"
is ``upper lobe , left bronchus``.

Special ids: ``0`` = ``[PAD]`` (padding, ignored by models and metrics), ``1`` = ``[UNK]``
(a word outside the vocabulary), ``2`` = ``[CLS]`` (the summary token of ``pooling="cls"``
Transformers; never written in a note).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable

import numpy as np
import simple_icd_10_cm as icd

PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]")
SPECIAL_IDS = (PAD_ID, UNK_ID, CLS_ID)

# The eight cancer subtypes used as labels across fedpriv, with their ICD-10-CM categories.
CANCER_SUBTYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("breast", ("C50",)),
    ("lung", ("C34",)),
    ("colorectal", ("C18", "C19", "C20")),
    ("prostate", ("C61",)),
    ("lymphoma", ("C81", "C82", "C83", "C84", "C85")),
    ("pancreas", ("C25",)),
    ("melanoma", ("C43",)),
    ("bladder", ("C67",)),
)
SUBTYPE_NAMES = tuple(name for name, _ in CANCER_SUBTYPES)

# ICD-10-CM chapters whose descriptions enter the vocabulary, by the first letter of the
# code (plus D00–D49, the rest of the neoplasm chapter).
_CHAPTER_LETTERS = ("C", "E", "I", "J", "K", "N")

# Every word the note templates of ``fedpriv.data.notes`` use beyond ICD-10-CM descriptions;
# the generator tokenises in strict mode, so a template word missing here fails loudly.
TEMPLATE_WORDS = """
patient is a year old man woman male female presents with for evaluation of referred by
primary care history past medical no known drug allergies social smoker former never
current pack years alcohol use denies family mother father sister brother had
ct mri pet scan shows mass in findings consistent with lesion noted on imaging
mammogram chest abdomen pelvis colonoscopy biopsy cystoscopy skin excision dermatoscopy
ultrasound psa elevated ng ml biopsy confirms pathology reveals grade stage
plan : and oncology referral surgical consult chemotherapy radiation therapy
follow up in weeks months tumor board discussion staging workup repeat labs
start neoadjuvant adjuvant immunotherapy hormone active surveillance resection
lumpectomy mastectomy lobectomy colectomy prostatectomy whipple procedure wide local
transurethral bladder port placement genetic counseling smoking cessation
medications include metformin lisinopril atorvastatin insulin aspirin amlodipine
on exam weight loss fatigue cough hematuria rectal bleeding night sweats jaundice
palpable lump changing mole urinary symptoms pain review of systems negative
otherwise unremarkable vital signs stable discussed risks benefits alternatives
agrees the to at , . : / - ( )
"""

_TOKEN_PATTERN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Splits ``text`` into lower-case words the way the vocabulary does.

    Example:
      >>> split_words("Malignant neoplasm of upper lobe, left bronchus or lung.")
      ['malignant', 'neoplasm', 'of', 'upper', 'lobe', ',', 'left', 'bronchus', 'or', 'lung', '.']
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN_PATTERN.findall(text.lower())


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClinicalVocabulary:
    """A word vocabulary: id ``i`` is ``words[i]``; ids 0–2 are the special tokens.

    Attributes:
      words: every token, special tokens first (``[PAD]``, ``[UNK]``, ``[CLS]``).

    Raises:
      ValueError: if ``words`` does not start with the special tokens or repeats a word.
    """

    words: tuple[str, ...]
    _index: dict = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.words, tuple) or tuple(self.words[:3]) != SPECIAL_TOKENS:
            raise ValueError(f"words must be a tuple starting with {SPECIAL_TOKENS}, got "
                             f"{tuple(self.words[:3]) if isinstance(self.words, tuple) else self.words!r}")
        index = {word: i for i, word in enumerate(self.words)}
        if len(index) != len(self.words):
            raise ValueError("words must be unique; the vocabulary repeats a word")
        object.__setattr__(self, "_index", index)

    @property
    def size(self) -> int:
        """Number of ids, special tokens included (the embedding table's row count)."""
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def id_of(self, word: str, *, strict: bool = False) -> int:
        """The id of ``word`` (already lower-case); ``[UNK]`` or ``ValueError`` if unknown.

        Raises:
          ValueError: in strict mode, naming the unknown word.
        """
        found = self._index.get(word)
        if found is None or found in SPECIAL_IDS:
            if strict:
                raise ValueError(f"word {word!r} is not in the clinical vocabulary "
                                 f"({self.size} words); strict tokenisation allows known words only")
            return UNK_ID
        return found

    def tokenize(self, text: str, *, max_len: int | None = None, strict: bool = False) -> np.ndarray:
        """Token ids of ``text``.

        Args:
          text: free text; split with ``split_words``.
          max_len: if given, the ids are truncated or padded with ``PAD_ID`` to this length.
          strict: raise on an unknown word instead of mapping it to ``[UNK]``.

        Returns:
          int32 ids, ``[num_words]`` or ``[max_len]``.

        Raises:
          ValueError: for a non-positive ``max_len`` or, in strict mode, an unknown word.
        """
        ids = np.array([self.id_of(word, strict=strict) for word in split_words(text)], np.int32)
        if max_len is None:
            return ids
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
        padded = np.full(max_len, PAD_ID, np.int32)
        padded[: min(max_len, ids.size)] = ids[:max_len]
        return padded

    def detokenize(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` joined by spaces, padding dropped.

        Raises:
          ValueError: for an id outside ``[0, size)``.
        """
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must be integers in [0, {self.size}), got values in "
                             f"[{ids.min()}, {ids.max()}]")
        return " ".join(self.words[i] for i in ids.tolist() if i != PAD_ID)


def cancer_codes(subtype: str) -> tuple[str, ...]:
    """Every ICD-10-CM code (categories and their descendants) of a cancer subtype, sorted.

    Raises:
      ValueError: for an unknown subtype, listing the known ones.
    """
    categories = dict(CANCER_SUBTYPES).get(subtype)
    if categories is None:
        raise ValueError(f"subtype must be one of {list(SUBTYPE_NAMES)}, got {subtype!r}")
    return tuple(sorted({code for category in categories
                         for code in (category, *icd.get_descendants(category))}))


@functools.lru_cache(maxsize=1)
def clinical_vocabulary() -> ClinicalVocabulary:
    """The default vocabulary, built once (about 0.3 s; see the module docstring)."""
    words: set[str] = set(split_words(TEMPLATE_WORDS))
    words.update(str(n) for n in range(121))
    for code in icd.get_all_codes(True):
        if icd.is_category_or_subcategory(code) and _in_vocabulary_chapters(code):
            words.update(split_words(icd.get_description(code)))
    return ClinicalVocabulary(words=SPECIAL_TOKENS + tuple(sorted(words)))


def _in_vocabulary_chapters(code: str) -> bool:
    if code[0] in _CHAPTER_LETTERS:
        return True
    # D00–D49 belong to the neoplasm chapter; D50 onwards are blood disorders.
    return code[0] == "D" and code[1:3].isdigit() and int(code[1:3]) <= 49


def tokenize(text: str, *, max_len: int | None = None, strict: bool = False) -> np.ndarray:
    """``clinical_vocabulary().tokenize``: token ids of ``text`` (see ``ClinicalVocabulary``)."""
    return clinical_vocabulary().tokenize(text, max_len=max_len, strict=strict)


def detokenize(ids: Iterable[int]) -> str:
    """``clinical_vocabulary().detokenize``: the words of ``ids``, padding dropped."""
    return clinical_vocabulary().detokenize(ids)
