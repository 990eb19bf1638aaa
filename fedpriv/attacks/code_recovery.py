"""ICD code recovery as one configurable attack: picks the method the observation allows.

``method="auto"`` reads the public protocol: under DP noise the chi-square row test
(optionally refined with the ICD-10-CM ontology), for one record per client the exact
counts, otherwise the exact set; ``"frozen"`` decomposes the pooled vector when the
embedding table is not trained. See :mod:`fedpriv.attacks.codes` for each method.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

from fedpriv.attacks import codes
from fedpriv.attacks.protocol import Attack, CodeRecoveryResult, PublicKnowledge, SideKnowledge
from fedpriv.typing import Model, Observation

CODE_METHODS = ("auto", "set", "counts", "noisy", "frozen")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodeRecoveryConfig:
    """How the server recovers the codes of each victim's records.

    Attributes:
      method: one of ``CODE_METHODS``.
      false_positive_rate: per absent code, the chance the noisy test reports it, in (0, 1).
      refine: apply the ontology-constrained refinement to the noisy test's scores.
      candidate_fraction: under refinement, codes scoring at least this fraction of the
        acceptance score are candidates the co-occurrence prior may add, in (0, 1].
      pooling: the model's pooling (public architecture), ``"sum"`` or ``"mean"``.
    """

    method: str = "auto"
    false_positive_rate: float = 1e-3
    refine: bool = False
    candidate_fraction: float = 0.5
    pooling: str = "sum"

    kind: ClassVar[str] = "codes"
    needs_public_images: ClassVar[bool] = False

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """Returns ``CodeRecoveryResult``s (the recovery and the method the protocol allowed)."""
        def recover(observation, key, victims, side: SideKnowledge):
            recovery, method = recover_codes(observation, model, self, victims=victims,
                                             noise_stddev=side.noise_stddev)
            return CodeRecoveryResult(recovery=recovery, method=method)
        return Attack(kind=self.kind, model=model, iterations=1, recover=recover)

    def __post_init__(self):
        if self.method not in CODE_METHODS:
            raise ValueError(f"method must be one of {CODE_METHODS}, got {self.method!r}")
        if not 0 < self.false_positive_rate < 1:
            raise ValueError(f"false_positive_rate must be in (0, 1), got {self.false_positive_rate!r}")
        if not 0 < self.candidate_fraction <= 1:
            raise ValueError(f"candidate_fraction must be in (0, 1], got {self.candidate_fraction!r}")
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {self.pooling!r}")


def recover_codes(observation: Observation, model: Model, config: CodeRecoveryConfig, *, victims: Sequence[int],
                  noise_stddev: float = 0.0) -> tuple[codes.CodeRecovery, str]:
    """Recovers each victim's codes; returns the recovery and the method used.

    Args:
      observation: what the server saw.
      model: the ``embedding_bag`` model.
      config: the attack.
      victims: positions on the observed client axis.
      noise_stddev: the public per-coordinate DP noise stddev in the update (0: none).

    Raises:
      ValueError: a method the observation does not allow (e.g. counts for batches), before compute.
    """
    metadata = observation.metadata
    method = config.method
    single = metadata.batch_size * metadata.local_steps == 1
    if method == "auto":
        method = "noisy" if noise_stddev > 0 else ("counts" if single else "set")
    if method == "noisy":
        if not noise_stddev > 0:
            raise ValueError("method 'noisy' needs the public noise stddev of the update (> 0)")
        recovery = codes.noisy_code_set(observation, model, victims, noise_stddev=noise_stddev,
                                        false_positive_rate=config.false_positive_rate)
        if config.refine:
            accept = -math.log(config.false_positive_rate)
            recovery = codes.refine_with_ontology(recovery, accept_score=accept,
                                                  candidate_score=config.candidate_fraction * accept,
                                                  single_record=single)
        return recovery, method
    if method == "counts":
        return codes.code_counts(observation, model, victims, pooling=config.pooling), method
    if method == "frozen":
        return codes.frozen_embedding_codes(observation, model, victims, pooling=config.pooling), method
    return codes.code_set(observation, model, victims), method
