"""Token records: EHR code bags and clinical notes in the shape the scenario handles.

Images travel as ``ImageCohort``; code bags (``EHRCohort``) and notes (``NotesCohort``)
become a ``TokenRecords``: integer inputs with 0 as padding, a label, the hospital each
record comes from, and (for tiered DP) each record's sensitivity tier. It offers what
``split_train_test`` and round building need (``subset``, ``labels``, ``num_classes``,
``num_records``, ``input_shape``), so one scenario runs every modality.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fedpriv.data.partition import PartitionConfig, partition_dirichlet, partition_iid, partition_quantity_skew

TOKEN_KINDS = ("codes", "tokens")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenRecords:
    """Labelled integer-token records of one cohort.

    Attributes:
      inputs: ``[N, L]`` int32 token ids, 0 = padding.
      labels: ``[N]`` int32 class (cancer subtype).
      site: ``[N]`` int32 hospital each record was generated at (its case mix).
      tiers: ``[N]`` int32 sensitivity tier of each record (index into ``tier_names``).
      kind: ``"codes"`` (an EHR code bag) or ``"tokens"`` (a clinical note).
      class_names: class names, index = label.
      tier_names: tier names, index = tier id.
      vocabulary_size: number of token ids (the model's embedding rows).
      vocabulary: the public vocabulary object the ids refer to.
      name: name used in reports.
    """

    inputs: np.ndarray
    labels: np.ndarray
    site: np.ndarray
    tiers: np.ndarray
    kind: str
    class_names: tuple[str, ...]
    tier_names: tuple[str, ...]
    vocabulary_size: int
    vocabulary: Any
    name: str

    def __post_init__(self):
        if self.kind not in TOKEN_KINDS:
            raise ValueError(f"kind must be one of {TOKEN_KINDS}, got {self.kind!r}")
        n = self.inputs.shape[0]
        if self.inputs.ndim != 2 or not np.issubdtype(self.inputs.dtype, np.integer):
            raise ValueError(f"inputs must be integer token ids [N, L], got {self.inputs.dtype} {self.inputs.shape}")
        for name in ("labels", "site", "tiers"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape [N] = ({n},), got {getattr(self, name).shape}")
        if self.inputs.size and (self.inputs.min() < 0 or self.inputs.max() >= self.vocabulary_size):
            raise ValueError(f"inputs must be token ids in [0, {self.vocabulary_size}), got values in "
                             f"[{self.inputs.min()}, {self.inputs.max()}]")

    @property
    def num_records(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.inputs.shape[1]),)

    @property
    def images(self) -> np.ndarray:
        """The inputs under the name round building and metrics use for every modality."""
        return self.inputs

    def subset(self, indices: np.ndarray, name: str | None = None) -> "TokenRecords":
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, inputs=self.inputs[indices], labels=self.labels[indices],
                                   site=self.site[indices], tiers=self.tiers[indices],
                                   name=self.name if name is None else name)


def partition_records(records: TokenRecords, config: PartitionConfig,
                      generator: np.random.Generator) -> list[np.ndarray]:
    """Splits token records into hospitals; ``by_site`` keeps each generated hospital's records.

    ``by_site`` needs ``config.num_clients`` equal to the cohort's number of sites (each
    site's case mix was drawn when the cohort was generated).
    """
    if config.scheme == "by_site":
        num_sites = int(records.site.max()) + 1
        if config.num_clients != num_sites:
            raise ValueError(f"data.partition.num_clients ({config.num_clients}) must equal the cohort's number of "
                             f"sites ({num_sites}) for scheme 'by_site'")
        parts = [np.flatnonzero(records.site == site).astype(np.int64) for site in range(num_sites)]
        small = [site for site, part in enumerate(parts) if part.size < config.min_records]
        if small:
            raise ValueError(f"sites {small} hold fewer than data.partition.min_records ({config.min_records}) "
                             "records; generate more records or lower min_records")
        return parts
    if config.scheme == "iid":
        return partition_iid(records.num_records, config.num_clients, generator)
    if config.scheme == "dirichlet":
        return partition_dirichlet(records.labels, config.num_clients, config.alpha, generator, config.min_records)
    return partition_quantity_skew(records.num_records, config.num_clients, config.alpha, generator,
                                   config.min_records)
