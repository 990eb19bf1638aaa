"""Secure aggregation and CKKS as protocols of a federated round.

``fedpriv.federated.Aggregation(protocol=...)`` hands a protocol the participating
clients' message vectors ``[K, D]`` on the host and gets back only their sum; the
server then never holds a single client's update. These adapters size each run of the
underlying protocol to the round (its ``K`` senders) and return a flat, JSON-able cost
report for ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from fedpriv.defenses.homomorphic import CKKSConfig, encrypted_sum
from fedpriv.defenses.secure_aggregation import Dropouts, SecureAggregationConfig, secure_sum


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecureAggregationProtocol:
    """Bonawitz et al.'s secure aggregation, one protocol run per round.

    Attributes:
      threshold_fraction: the Shamir threshold as a fraction of the round's senders,
        ``t = max(2, ceil(threshold_fraction * K))``; in (0, 1].
      clip_range: per-coordinate clip before fixed-point encoding, ``> 0``; at least the
        largest coordinate a message can hold (e.g. the DP-FedAvg clip norm).
      fixed_point_scale: codes per unit of the fixed-point encoding, ``> 0``.
      prf: ``"aes-ctr"`` or ``"chacha20"`` mask expansion.
      dropout_rate: simulated probability that a client drops after sharing its keys,
        in [0, 1).

    **Formal guarantees**

    - Bound: against an honest-but-curious server colluding with fewer than ``t``
      clients, the server learns nothing about a client's message beyond the sum over
      the survivors (see :func:`fedpriv.defenses.secure_aggregation.secure_sum`).
    - Unit: confidentiality of one client's message; no DP by itself.
    - Not protected: the sum (attacks on aggregates still apply); who took part; a
      server that deviates from the protocol; messages clipped by ``clip_range``.

    References:
      Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
      Learning", CCS 2017, arXiv 1611.04482.
    """

    name = "secure_aggregation"

    threshold_fraction: float = 0.67
    clip_range: float = 1.0
    fixed_point_scale: float = float(1 << 20)
    prf: str = "aes-ctr"
    dropout_rate: float = 0.0

    def __post_init__(self):
        if not 0 < self.threshold_fraction <= 1:
            raise ValueError(f"threshold_fraction must be in (0, 1], got {self.threshold_fraction!r}")
        # Builds a two-client config now so bad values fail before any training.
        self._config(2)

    def _config(self, senders: int) -> SecureAggregationConfig:
        threshold = min(senders, max(2, math.ceil(self.threshold_fraction * senders)))
        return SecureAggregationConfig(num_clients=senders, threshold=threshold, clip_range=self.clip_range,
                                       fixed_point_scale=self.fixed_point_scale, prf=self.prf,
                                       dropout_rate=self.dropout_rate)

    def aggregate(self, vectors: np.ndarray, key: jax.Array | None = None) -> tuple[np.ndarray, dict]:
        """The sum of ``vectors [K, D]`` over the clients that survive the protocol."""
        if vectors.shape[0] < 2:
            raise ValueError(f"secure aggregation needs at least 2 senders in a round, got {vectors.shape[0]}; "
                             "a single client's sum is its update")
        total, report = secure_sum(np.asarray(vectors, np.float32), self._config(vectors.shape[0]),
                                   jax.random.key(0) if key is None else key,
                                   None if self.dropout_rate > 0 else Dropouts())
        flat = {"bytes_per_client": int(sum(report.bytes_per_client.values())),
                "plaintext_bytes_per_client": int(report.plaintext_bytes),
                "seconds": float(sum(report.seconds.values())),
                "num_dropped": len(report.dropped)}
        return np.asarray(total, np.float64), flat


@dataclasses.dataclass(frozen=True, kw_only=True)
class HomomorphicProtocol:
    """CKKS aggregation with TenSEAL: clients encrypt, the server adds ciphertexts.

    Attributes:
      ckks: the CKKS parameter set (validated when built: bad sets fail before training).

    **Formal guarantees**

    - Bound: the aggregator holds only the public context and ciphertexts (IND-CPA under
      RLWE); the key holder decrypts only the sum (see
      :func:`fedpriv.defenses.homomorphic.encrypted_sum`).
    - Unit: confidentiality of one client's message; no DP by itself.
    - Not protected: the decrypted sum; who took part; a colluding key holder and server.
    """

    name = "homomorphic"

    ckks: CKKSConfig = dataclasses.field(default_factory=CKKSConfig)

    def aggregate(self, vectors: np.ndarray, key: jax.Array | None = None) -> tuple[np.ndarray, dict]:
        """The sum of ``vectors [K, D]``, computed under CKKS."""
        total, report = encrypted_sum(np.asarray(vectors, np.float64), self.ckks)
        flat = {"bytes_per_client": float(report.bytes_per_client),
                "plaintext_bytes_per_client": int(report.plaintext_bytes_per_client),
                "seconds": float(report.encrypt_seconds + report.add_seconds + report.decrypt_seconds),
                "max_abs_error": float(report.max_abs_error)}
        return total, flat

