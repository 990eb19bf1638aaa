"""Keeps a run's signed audit log: every hospital signs what it released each round.

The recorder holds one Ed25519 key per hospital (fresh from the OS for every run: a
seeded key would be forgeable). After every round it appends, per hospital and per
privacy key of the plan (its unit, or each sensitivity tier), one record of the round's
release as the plan accounts it (``plan.ledger_rounds``), the rounds a hospital sat out
included, to :class:`fedpriv.defenses.AuditLog`. At the end it verifies the file and
replays the accounting with :func:`fedpriv.defenses.verify_audit_log`, which must give
the plan's epsilon. The public keys are written beside the log so anyone can verify it.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedpriv.defenses.audit_log import NOTHING_SENT, AuditEntry, AuditLog, update_digest, verify_audit_log
from fedpriv.privacy.ledger import PrivacyLedger


class AuditLogRecorder:
    """Writes ``path`` (JSON Lines) and ``path`` + ``.keys.json`` (hospital public keys).

    A round observer of :func:`fedpriv.federated.train` (``after_round``).

    Args:
      path: where the log goes; must not exist yet (a run never overwrites a log).
      plan: the run's privacy plan; it must record rounds (``ledger_rounds``).
      num_clients: hospitals.
      l2_clip_norm: the clip norm of the mechanism (stated in every record).
      delta: the delta epsilons are stated at.
      accountant: ``"rdp"`` or ``"pld"``.

    Raises:
      ValueError: if ``path`` exists or its folder does not, or the plan records nothing.
    """

    def __init__(self, path: str | pathlib.Path, *, plan, num_clients: int, l2_clip_norm: float, delta: float,
                 accountant: str):
        self.path = pathlib.Path(path)
        if self.path.exists():
            raise ValueError(f"audit log {str(self.path)!r} already exists; a run never overwrites a log")
        if not self.path.parent.is_dir():
            raise ValueError(f"the folder of audit log {str(self.path)!r} does not exist")
        if not plan.ledger_rounds(0):
            raise ValueError(f"privacy plan {plan.name!r} records no rounds: nothing for the audit log to attest")
        self._plan = plan
        self._keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(num_clients)]
        self.public_keys = {client: key.public_key() for client, key in enumerate(self._keys)}
        self.keys_path = self.path.with_name(self.path.name + ".keys.json")
        raw = {str(client): key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
               for client, key in self.public_keys.items()}
        self.keys_path.write_text(json.dumps(raw, indent=1, sort_keys=True))
        self._log = AuditLog(self.path, self.public_keys)
        # Every hospital records every round as the plan accounts it: one accounting per key serves all.
        self._accounting = {key: PrivacyLedger(unit=self._unit(key)) for key in plan.ledger_rounds(0)}
        self.l2_clip_norm, self.delta, self.accountant = l2_clip_norm, delta, accountant
        self.num_clients = num_clients

    def _unit(self, key: str) -> str:
        return key if key in ("example", "client") else "example"  # a tier's records are examples

    def after_round(self, round_index: int, participating: np.ndarray, outcome) -> None:
        """Appends the round's records, every hospital and key, in one write (``outcome.sent``:
        what each hospital sent)."""
        releases = self._plan.ledger_rounds(round_index)
        epsilons = {}
        for key, release in releases.items():
            self._accounting[key].record_round(release.noise_multiplier, release.sampling_rate, release.steps)
            epsilons[key] = self._accounting[key].epsilon(self.delta, self.accountant)
        host_sent = jax.device_get(outcome.sent)
        items = []
        for client in range(self.num_clients):
            joined = bool(participating[client])
            digest = (update_digest(jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[client]), host_sent))
                      if joined else NOTHING_SENT)
            for key, release in releases.items():
                entry = AuditEntry(round_index=round_index, client_id=client, update_sha256=digest,
                                   l2_clip_norm=self.l2_clip_norm, noise_multiplier=release.noise_multiplier,
                                   sampling_rate=release.sampling_rate, steps=release.steps, epsilon=epsilons[key],
                                   delta=self.delta, accountant=self.accountant, unit=self._unit(key),
                                   joined=joined, tier="" if key in ("example", "client") else key)
                items.append((entry, self._keys[client]))
        self._log.extend(items)

    def verify(self) -> dict[str, object]:
        """Verifies the file against the keys and the chain head, replaying each hospital's last epsilon."""
        verification = verify_audit_log(self.path, self.public_keys, expected_head=self._log.head, replay="last")
        replayed = list(verification.replayed_epsilon.values()) if verification.replayed_epsilon else [float("nan")]
        return {"audit_log.records": len(self._log), "audit_log.verified": bool(verification.ok),
                "audit_log.problems": len(verification.problems), "audit_log.head": self._log.head,
                "audit_log.max_replayed_epsilon": float(max(replayed)), "audit_log.path": str(self.path)}
