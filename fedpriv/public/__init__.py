"""Public knowledge both sides may use (DESIGN §1): the ICD-10-CM ontology and vocabularies.

Private cohorts in ``fedpriv.data`` are built from it, and attacks may import it: the
ICD-10-CM hierarchy (chapter -> block -> category -> code), the fixed code vocabulary of
EHR records with a public co-occurrence prior, and the word vocabulary of clinical notes.
"""

from fedpriv.public.clinical_words import ClinicalVocabulary, clinical_vocabulary, detokenize, tokenize
from fedpriv.public.icd10 import (CANCER_SUBTYPES, SUBTYPE_NAMES, CodeHierarchy, CooccurrencePrior, Vocabulary,
                                  cooccurrence_prior, description, hierarchy, public_vocabulary)

__all__ = [
    "CANCER_SUBTYPES", "SUBTYPE_NAMES", "ClinicalVocabulary", "CodeHierarchy", "CooccurrencePrior", "Vocabulary",
    "clinical_vocabulary", "cooccurrence_prior", "description", "detokenize", "hierarchy", "public_vocabulary",
    "tokenize",
]
