"""Public knowledge both sides may use (DESIGN §1): ontologies, vocabularies, public image sets.

Empty in this slice; the ICD-10-CM hierarchy and code vocabularies arrive with the EHR attacks.
"""
