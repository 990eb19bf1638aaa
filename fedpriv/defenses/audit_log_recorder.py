"""Keeps a run's signed audit log: every hospital signs what it released each round.

The recorder holds one Ed25519 key per hospital (fresh from the OS for every run: a
seeded key would be forgeable). After every round it appends, per hospital and per
privacy key of the plan (its unit, or each sensitivity tier), one record of the round's
release as the plan accounts it (``plan.ledger_rounds``), the rounds a hospital sat out
included, to :class:`fedpriv.defenses.AuditLog`. At the end it verifies the file and
replays the accounting with :func:`fedpriv.defenses.verify_audit_log`, which must give
the plan's epsilon. The public keys are written beside the log so anyone can verify it.

A checkpointed run (``fedpriv.federated.checkpoints``) stores the recorder's state with
each round checkpoint: the hospitals' signing keys, the log's length, size and chain head,
and the accounting. A resumed run builds the recorder with ``resume=True`` and restores
that state, which cuts the log back to what it held at the checkpoint (the rounds after it
are signed again when they run again), so the log ends as an uninterrupted run's would.
"""

from __future__ import annotations

import json
import os
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
      resume: the run resumes from a checkpoint: the log may exist, and nothing is written
        until :meth:`restore_state` has put the checkpointed keys and log back.

    Raises:
      ValueError: if ``path`` exists (unless resuming) or its folder does not, or the plan
        records nothing.

    **Formal guarantees**

    - Not protected: a checkpoint holds the hospitals' signing keys; whoever reads the
      checkpoint folder can sign records as any hospital. Keep it as private as the keys.
    """

    def __init__(self, path: str | pathlib.Path, *, plan, num_clients: int, l2_clip_norm: float, delta: float,
                 accountant: str, resume: bool = False):
        self.path = pathlib.Path(path)
        if self.path.exists() and not resume:
            raise ValueError(f"audit log {str(self.path)!r} already exists; a run never overwrites a log (a run "
                             "resuming from a checkpoint reopens it, but no intact checkpoint was found)")
        if not self.path.parent.is_dir():
            raise ValueError(f"the folder of audit log {str(self.path)!r} does not exist")
        if not plan.ledger_rounds(0):
            raise ValueError(f"privacy plan {plan.name!r} records no rounds: nothing for the audit log to attest")
        self._plan = plan
        self.keys_path = self.path.with_name(self.path.name + ".keys.json")
        self.l2_clip_norm, self.delta, self.accountant = l2_clip_norm, delta, accountant
        self.num_clients = num_clients
        self._log: AuditLog | None = None
        if not resume:
            self._open([ed25519.Ed25519PrivateKey.generate() for _ in range(num_clients)])

    def _open(self, signing_keys: list) -> None:
        """Takes the hospitals' keys, writes their public halves beside the log and opens it."""
        self._keys = signing_keys
        self.public_keys = {client: key.public_key() for client, key in enumerate(self._keys)}
        raw = {str(client): key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
               for client, key in self.public_keys.items()}
        self.keys_path.write_text(json.dumps(raw, indent=1, sort_keys=True))
        self._log = AuditLog(self.path, self.public_keys)
        # Every hospital records every round as the plan accounts it: one accounting per key serves all.
        self._accounting = {key: PrivacyLedger(unit=self._unit(key)) for key in self._plan.ledger_rounds(0)}

    def _unit(self, key: str) -> str:
        return key if key in ("example", "client") else "example"  # a tier's records are examples

    def checkpoint_state(self) -> dict:
        """The signing keys, the log's length, size and head, the accounting
        (``fedpriv.federated.checkpoints.HostParty``; see the class's guarantees)."""
        raw = [key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption()).hex() for key in self._keys]
        return {"signing_keys": raw, "records": len(self._log), "size": self._log.size, "head": self._log.head,
                "accounting": {key: ledger.checkpoint_state() for key, ledger in self._accounting.items()}}

    def restore_state(self, state) -> None:
        """Reopens the log as the checkpoint left it: its keys, its records up to the
        checkpoint (later ones, from the rounds that will run again, are cut off) and the accounting.

        Raises:
          ValueError: if the checkpoint's hospitals differ, or the log on disk is shorter
            than the checkpoint's or does not chain to its head.
        """
        if len(state["signing_keys"]) != self.num_clients:
            raise ValueError(f"the checkpointed audit log has {len(state['signing_keys'])} hospitals' keys, this run "
                             f"has {self.num_clients} hospitals")
        _cut_back(self.path, state["size"])
        self._open([ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(raw)) for raw in state["signing_keys"]])
        if (len(self._log), self._log.head) != (state["records"], state["head"]):
            raise ValueError(f"audit log {self.path} does not match the checkpoint: {len(self._log)} records ending in "
                             f"{self._log.head}, the checkpoint has {state['records']} ending in {state['head']}")
        for key, ledger in self._accounting.items():
            ledger.restore_state(state["accounting"][key])

    def after_round(self, round_index: int, participating: np.ndarray, outcome) -> None:
        """Appends the round's records, every hospital and key, in one write (``outcome.sent``:
        what each hospital sent)."""
        if self._log is None:
            raise RuntimeError("a resuming audit-log recorder needs restore_state before its first round")
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


def _cut_back(path: pathlib.Path, size: int) -> None:
    """Cuts ``path`` back to its first ``size`` bytes, durably (no file is fine when ``size`` is 0)."""
    if not path.exists():
        if size:
            raise ValueError(f"audit log {path} is missing; the checkpoint expects {size} bytes of it")
        return
    if path.stat().st_size < size:
        raise ValueError(f"audit log {path} holds {path.stat().st_size} bytes, the checkpoint expects at least {size}")
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())
