"""Keeps a run's signed audit ledger: every hospital signs what it released each round.

The recorder holds one Ed25519 key per hospital (fresh from the OS for every run: a
seeded key would be forgeable), appends one record per participating hospital and round
to :class:`fedpriv.defenses.AuditLedger`, and at the end verifies the file and replays
the accounting with :func:`fedpriv.defenses.verify_ledger`. The public keys are written
beside the ledger so anyone can verify it again.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedpriv.defenses.audit_ledger import AuditEntry, AuditLedger, update_digest, verify_ledger
from fedpriv.privacy.ledger import PrivacyLedger
from fedpriv.typing import Params


class LedgerRecorder:
    """Writes ``path`` (JSON Lines) and ``path`` + ``.keys.json`` (hospital public keys).

    Args:
      path: where the ledger goes; must not exist yet (a run never overwrites a ledger).
      num_clients: hospitals.
      unit: ``"example"`` (DP-SGD) or ``"client"`` (DP-FedAvg).
      l2_clip_norm: the clip norm of the mechanism.
      delta: the delta epsilons are stated at.
      accountant: ``"rdp"`` or ``"pld"``.

    Raises:
      ValueError: if ``path`` exists or its folder does not.
    """

    def __init__(self, path: str | pathlib.Path, *, num_clients: int, unit: str, l2_clip_norm: float, delta: float,
                 accountant: str):
        self.path = pathlib.Path(path)
        if self.path.exists():
            raise ValueError(f"audit ledger {str(self.path)!r} already exists; a run never overwrites a ledger")
        if not self.path.parent.is_dir():
            raise ValueError(f"the folder of audit ledger {str(self.path)!r} does not exist")
        self._keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(num_clients)]
        self.public_keys = {client: key.public_key() for client, key in enumerate(self._keys)}
        self.keys_path = self.path.with_name(self.path.name + ".keys.json")
        raw = {str(client): key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
               for client, key in self.public_keys.items()}
        self.keys_path.write_text(json.dumps(raw, indent=1, sort_keys=True))
        self._ledger = AuditLedger(self.path, self.public_keys)
        self._privacy = [PrivacyLedger(unit=unit) for _ in range(num_clients)]
        self._cache: dict[tuple, float] = {}
        self._histories = [() for _ in range(num_clients)]
        self.unit, self.l2_clip_norm, self.delta, self.accountant = unit, l2_clip_norm, delta, accountant

    def record(self, round_index: int, participating: np.ndarray, sent: Params, *, noise_multiplier: float,
               sampling_rate: float, steps: int) -> None:
        """Appends one signed record per participating hospital (atomically, as one batch)."""
        items = []
        for client in np.flatnonzero(participating):
            release = (float(noise_multiplier), float(sampling_rate), int(steps))
            self._privacy[client].record_round(*release)
            history = self._histories[client] = self._histories[client] + (release,)
            if history not in self._cache:  # hospitals with the same history share one accounting
                self._cache[history] = self._privacy[client].epsilon(self.delta, self.accountant)
            message = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[client]), sent)
            entry = AuditEntry(round_index=round_index, client_id=int(client), update_sha256=update_digest(message),
                               l2_clip_norm=self.l2_clip_norm, noise_multiplier=release[0], sampling_rate=release[1],
                               steps=release[2], epsilon=self._cache[history], delta=self.delta,
                               accountant=self.accountant, unit=self.unit)
            items.append((entry, self._keys[client]))
        if items:
            self._ledger.extend(items)

    def verify(self) -> dict[str, object]:
        """Verifies the file against the keys and the chain head, replaying each hospital's last epsilon."""
        verification = verify_ledger(self.path, self.public_keys, expected_head=self._ledger.head, replay="last")
        replayed = list(verification.replayed_epsilon.values()) if verification.replayed_epsilon else [float("nan")]
        return {"audit_ledger.records": len(self._ledger), "audit_ledger.verified": bool(verification.ok),
                "audit_ledger.problems": len(verification.problems), "audit_ledger.head": self._ledger.head,
                "audit_ledger.max_replayed_epsilon": float(max(replayed)), "audit_ledger.path": str(self.path)}
