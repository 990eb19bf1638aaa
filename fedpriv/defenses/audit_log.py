"""A signed, hash-chained audit log of what every hospital released (DESIGN §4).

Each round every hospital adds a record: the SHA-256 of the update it sent, the DP
parameters it ran with and the privacy spent so far (epsilon at delta, and the
accountant). A record holds the hash of the one before and is signed with the hospital's
Ed25519 key, so :func:`verify_audit_log` detects edited, dropped, inserted or reordered
records and REPLAYS the accounting to the recorded epsilons with :mod:`fedpriv.privacy`.

On disk: JSON Lines of canonical JSON (sorted keys, no whitespace, ASCII, no NaN or
infinity; an infinite epsilon is ``"inf"``), so signatures are reproducible. A round is
appended in one write and fsynced; a write that fails is cut back to the old length, so
the file keeps what it had, and a crash mid-write leaves a torn last line that
:func:`verify_audit_log` reports (the records before it stay valid). The chain cannot show
records cut off the END: keep :attr:`AuditLog.head` elsewhere and pass it to
:func:`verify_audit_log`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import numbers
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import ledger as ledger_lib
from fedpriv.typing import Params

FORMAT = "fedpriv.audit_log.v2"
GENESIS_HASH = "0" * 64
# A domain tag, so an audit-log signature is no signature over any other message of the hospital.
_SIGNATURE_DOMAIN = FORMAT.encode("ascii") + b"\n"
_HEX = frozenset("0123456789abcdef")
REPLAY_MODES: tuple[str, ...] = ("every", "last", "none")
NOTHING_SENT = hashlib.sha256(b"").hexdigest()


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """``value`` as canonical JSON bytes: sorted keys, no whitespace, ASCII, no NaN/inf.

    Example:
      >>> canonical_json({"noise_multiplier": 1.1, "client_id": 3})
      b'{"client_id":3,"noise_multiplier":1.1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_hash(line: bytes) -> str:
    """SHA-256 (hex) of one audit-log line, without its newline: what the next record chains to."""
    return hashlib.sha256(line).hexdigest()


def update_digest(update: Params) -> str:
    """SHA-256 (hex) of an update: each leaf's dtype, shape and C-order bytes, in tree order."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(update):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode("ascii"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


def _check_index(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """What one hospital states about one round (the signed content of a record).

    Attributes:
      round_index: the round, ``>= 0``; increasing per hospital.
      client_id: the hospital, ``>= 0``; must have a registered public key.
      update_sha256: :func:`update_digest` of the update it sent, 64 lowercase hex digits.
      l2_clip_norm: the clip norm, finite and ``> 0``.
      noise_multiplier: noise stddev / sensitivity of the round, finite and ``>= 0``.
      sampling_rate: Poisson sampling rate of the unit in the round, in (0, 1].
      steps: releases in the round (local DP-SGD steps, or 1 for DP-FedAvg), ``>= 1``.
      epsilon: epsilon spent so far by this hospital's unit, this round included, ``>= 0``
        (``inf`` without noise).
      delta: the delta ``epsilon`` is stated at, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``, the accountant that gave ``epsilon``.
      unit: ``"example"`` or ``"client"``.
      joined: whether the hospital took part in the round (``update_sha256`` is then the
        digest of what it sent; of nothing, :data:`NOTHING_SENT`, otherwise).
      tier: the privacy key the record accounts: ``""`` for the unit itself, else a
        sensitivity tier's name (its records have their own budget).

    Raises:
      ValueError: on construction, if a field is out of range (names field, value, allowed).
    """

    round_index: int
    client_id: int
    update_sha256: str
    l2_clip_norm: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    epsilon: float
    delta: float
    accountant: str
    unit: str
    joined: bool = True
    tier: str = ""

    def __post_init__(self):
        if not isinstance(self.joined, bool):
            raise ValueError(f"joined must be true or false, got {self.joined!r}")
        if not isinstance(self.tier, str):
            raise ValueError(f"tier must be a string ('' for the unit itself), got {self.tier!r}")
        checked = {
            "round_index": _check_index(self.round_index, "round_index"),
            "client_id": _check_index(self.client_id, "client_id"),
            "l2_clip_norm": _validation.check_positive(self.l2_clip_norm, "l2_clip_norm"),
            "noise_multiplier": _validation.check_noise_multiplier(self.noise_multiplier),
            "sampling_rate": _validation.check_sampling_rate(self.sampling_rate),
            "steps": _validation.check_steps(self.steps),
            "delta": _validation.check_delta(self.delta),
            "accountant": _validation.check_choice(self.accountant, "accountant", accountant_lib.ACCOUNTANTS),
            "unit": _validation.check_choice(self.unit, "unit", accountant_lib.UNITS),
        }
        if not _is_hex(self.update_sha256, 64):
            raise ValueError(f"update_sha256 must be 64 lowercase hex digits (update_digest), "
                             f"got {self.update_sha256!r}")
        epsilon = self.epsilon
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
            raise ValueError(f"epsilon must be a number >= 0 (inf allowed), got {epsilon!r}")
        checked["epsilon"] = float(epsilon)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def body(self) -> dict[str, Any]:
        """The entry as a JSON-able dict (infinite epsilon as ``"inf"``)."""
        return {**dataclasses.asdict(self), "epsilon": "inf" if math.isinf(self.epsilon) else self.epsilon}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "AuditEntry":
        """The entry of a record dict; raises ``ValueError`` on a missing or bad field."""
        names = [field.name for field in dataclasses.fields(cls)]
        if missing := [name for name in names if name not in body]:
            raise ValueError(f"record lacks the fields {missing}")
        values = {name: body[name] for name in names}
        return cls(**{**values, "epsilon": math.inf if values["epsilon"] == "inf" else values["epsilon"]})


def _unsigned(entry: AuditEntry, index: int, previous_hash: str) -> dict[str, Any]:
    """A record without its signature: the entry at its place in the chain."""
    return {**entry.body(), "format": FORMAT, "index": index, "previous_hash": previous_hash}


def _signed_message(unsigned: Mapping[str, Any]) -> bytes:
    return _SIGNATURE_DOMAIN + canonical_json(unsigned)


def _check_public_keys(public_keys: Mapping[int, ed25519.Ed25519PublicKey]) -> dict[int, Any]:
    if not isinstance(public_keys, Mapping):
        raise ValueError(f"public_keys must be a mapping from client id to Ed25519PublicKey, got "
                         f"{type(public_keys).__name__}")
    checked = {}
    for client_id, key in public_keys.items():
        client_id = _check_index(client_id, "public_keys client id")
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"public_keys[{client_id}] must be an Ed25519PublicKey, got {type(key).__name__}")
        checked[client_id] = key
    return checked


def _write_all(handle, data: bytes) -> None:
    """Writes ``data`` to ``handle`` (a seam: tests make it fail halfway)."""
    handle.write(data)


def _append_durably(path: pathlib.Path, data: bytes, old_size: int) -> None:
    """Appends ``data`` to ``path`` and fsyncs it; on failure cuts the file back to ``old_size``."""
    created = not path.exists()
    try:
        with open(path, "ab") as handle:
            _write_all(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.truncate(path, old_size)
        raise
    if created:  # the new file's name is durable once its directory is
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class AuditLog:
    """The writer: appends signed, chained records to a JSON Lines file, a round at a time.

    Opening an existing file checks its chain and signatures (not the accounting) and
    refuses to extend a broken log.

    Args:
      path: the log file; created on the first append if missing.
      public_keys: ``{client_id: Ed25519PublicKey}`` of every hospital allowed to sign.

    Raises:
      ValueError: if ``public_keys`` is malformed, or the existing file does not verify.

    **Formal guarantees**

    - Bound: none on privacy. Integrity: a verified record was signed by its hospital over
      its content and position (index, previous hash); Ed25519 (EUF-CMA) and SHA-256 make
      undetected edits, insertions, drops (but at the end) and reorderings infeasible.
    - Not protected: a hospital signing false numbers (replay catches an epsilon that
      the recorded parameters do not give, not parameters other than those that ran);
      records cut off the end without an ``expected_head``; a leaked signing key.

    References:
      Haber, Stornetta 1991, "How to Time-Stamp a Digital Document", J. Cryptology 3(2)
      (hash-chained logs). Bernstein et al. 2012, "High-speed high-security signatures",
      J. Cryptographic Engineering 2(2) (Ed25519). Crosby, Wallach 2009, "Efficient Data
      Structures for Tamper-Evident Logging", USENIX Security 2009.
    """

    def __init__(self, path: str | os.PathLike, public_keys: Mapping[int, ed25519.Ed25519PublicKey]):
        self._path = pathlib.Path(path)
        self._public_keys = _check_public_keys(public_keys)
        self._head, self._length, self._size = GENESIS_HASH, 0, 0
        if self._path.exists():
            report = verify_audit_log(self._path, self._public_keys, replay="none")
            if not report.ok:
                first = report.problems[0]
                raise ValueError(f"cannot extend {self._path}: it does not verify; first problem: line "
                                 f"{first.line}: {first.kind}: {first.message}")
            self._head, self._length, self._size = report.head, report.records, self._path.stat().st_size

    path = property(lambda self: self._path, doc="The log file.")

    @property
    def head(self) -> str:
        """Hash of the last record (:data:`GENESIS_HASH` when empty); keep it elsewhere."""
        return self._head

    def __len__(self) -> int:  # records written
        return self._length

    @property
    def size(self) -> int:
        """Bytes of the file this writer has written or verified (what a checkpoint cuts it back to)."""
        return self._size

    def append(self, entry: AuditEntry, signing_key: ed25519.Ed25519PrivateKey) -> str:
        """Signs ``entry`` with its hospital's key and appends it atomically (see :meth:`extend`)."""
        return self.extend([(entry, signing_key)])[0]

    def extend(self, items: Sequence[tuple[AuditEntry, ed25519.Ed25519PrivateKey]]) -> tuple[str, ...]:
        """Signs and appends several entries (e.g. one round) in ONE write, fsynced.

        Args:
          items: ``(entry, signing_key)`` pairs, in log order.

        Returns:
          The hash of each record written, in order (the last is the new :attr:`head`).

        Raises:
          ValueError: before anything is written, if an item is not an ``AuditEntry`` with
            an Ed25519 private key, its client has no registered public key, or the key is
            not the registered one.
          RuntimeError: if the file changed on disk since this writer last saw it.
          OSError: if writing fails; the file is then cut back to what it held.
        """
        items = list(items)
        for position, item in enumerate(items):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], AuditEntry)
                    and isinstance(item[1], ed25519.Ed25519PrivateKey)):
                raise ValueError(f"items[{position}] must be (AuditEntry, Ed25519PrivateKey), got {item!r}")
            entry, signing_key = item
            registered = self._public_keys.get(entry.client_id)
            if registered is None:
                raise ValueError(f"items[{position}]: client_id {entry.client_id} has no registered public key; "
                                 f"registered: {sorted(self._public_keys)}")
            if signing_key.public_key() != registered:
                raise ValueError(f"items[{position}]: the signing key is not client {entry.client_id}'s "
                                 f"registered key")
        size = self._path.stat().st_size if self._path.exists() else 0
        if size != self._size or (size and self._last_line_hash() != self._head):
            raise RuntimeError(f"{self._path} changed on disk since this writer last wrote it; reopen and verify it")
        hashes, lines, head = [], [], self._head
        for offset, (entry, signing_key) in enumerate(items):
            unsigned = _unsigned(entry, self._length + offset, head)
            line = canonical_json({**unsigned, "signature": signing_key.sign(_signed_message(unsigned)).hex()})
            lines.append(line + b"\n")
            head = record_hash(line)
            hashes.append(head)
        data = b"".join(lines)
        _append_durably(self._path, data, self._size)
        self._head, self._length, self._size = head, self._length + len(hashes), self._size + len(data)
        return tuple(hashes)

    def _last_line_hash(self) -> str:
        """Hash of the file's last line (reads only its tail)."""
        with open(self._path, "rb") as handle:
            handle.seek(max(0, self._size - 65536))
            tail = handle.read()
        return record_hash(tail[:-1].rsplit(b"\n", 1)[-1])


@dataclasses.dataclass(frozen=True)
class AuditLogProblem:
    """One finding: the 1-based line, a kind, and why.

    Kinds: ``malformed`` (not a JSON object, or a torn last line), ``not_canonical``,
    ``invalid_record`` (a field missing or out of range), ``index`` and ``chain`` (a record
    dropped, inserted or moved here, or the line before edited), ``unknown_client``,
    ``signature``, ``round_order`` (a hospital's rounds not increasing),
    ``epsilon_mismatch`` (replay disagrees), ``head`` (records cut off or added at the end).
    """

    line: int
    kind: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditLogVerification:
    """The result of :func:`verify_audit_log`.

    Attributes:
      records: lines read. problems: every finding, in line order (``ok`` iff none).
      head: hash of the last line (:data:`GENESIS_HASH` for an empty log).
      replayed_epsilon: ``{(client_id, tier): epsilon}`` replayed at each hospital's (and
        tier's) last checked record (empty with ``replay="none"``). seconds: wall-clock time of the check.
    """

    records: int
    problems: tuple[AuditLogProblem, ...]
    head: str
    replayed_epsilon: dict[tuple[int, str], float]
    seconds: float

    ok = property(lambda self: not self.problems, doc="True iff nothing was found.")


def verify_audit_log(
    path: str | os.PathLike,
    public_keys: Mapping[int, ed25519.Ed25519PublicKey],
    *,
    expected_head: str | None = None,
    replay: str = "every",
    epsilon_tolerance: float = 1e-9,
) -> AuditLogVerification:
    """Checks every line of an audit log and replays each hospital's privacy accounting.

    Every line must be canonical JSON of a valid record, at the next index, chained to the
    line before, signed by its hospital's registered key, with rounds increasing per
    hospital. Replay composes each hospital's validly signed noise multipliers, sampling
    rates and releases again with :class:`fedpriv.privacy.PrivacyLedger` (the canonical
    accounting of :func:`fedpriv.privacy.epsilon_for`) at the record's delta and
    accountant; it must give the recorded epsilon within ``epsilon_tolerance`` (relative
    and absolute). Every problem is reported, not just the first.

    Args:
      path: the JSON Lines file.
      public_keys: ``{client_id: Ed25519PublicKey}`` of the hospitals.
      expected_head: the head hash kept outside the file, or ``None`` (records cut off the
        end then go unnoticed).
      replay: ``"every"`` record's epsilon, each hospital's ``"last"`` (one accounting per
        hospital, not per round: accounting is the expensive part) or ``"none"``.
      epsilon_tolerance: allowed relative and absolute difference, ``>= 0``.

    Returns:
      A :class:`AuditLogVerification`.

    Raises:
      ValueError: if an argument is malformed. FileNotFoundError: if ``path`` is missing.

    **Formal guarantees**

    - Bound: ``ok`` implies that every record was signed by its hospital's registered key
      at its position, and that the recorded epsilons are what the recorded parameters
      give under add/remove-one accounting, for the recorded unit.
    - Not protected: parameters recorded consistently but different from what ran;
      records cut off the end when ``expected_head`` is ``None``; compromised keys.

    References:
      Crosby, Wallach 2009, "Efficient Data Structures for Tamper-Evident Logging",
      USENIX Security 2009. Mironov 2017, arXiv 1702.07476 (the replayed accounting).
    """
    start = time.perf_counter()
    public_keys = _check_public_keys(public_keys)
    if expected_head is not None and not _is_hex(expected_head, 64):
        raise ValueError(f"expected_head must be 64 lowercase hex digits or None, got {expected_head!r}")
    epsilon_tolerance = _validation.check_noise_multiplier(epsilon_tolerance, "epsilon_tolerance")  # finite, >= 0
    replay = _validation.check_choice(replay, "replay", REPLAY_MODES)
    lines = pathlib.Path(path).read_bytes().split(b"\n")
    torn = lines[-1] != b""  # a complete log ends with a newline
    lines = lines if torn else lines[:-1]
    problems: list[AuditLogProblem] = []
    signed: list[tuple[int, AuditEntry]] = []
    last_round: dict[tuple[int, str], int] = {}
    previous_hash, previous_index = GENESIS_HASH, -1
    for number, line in enumerate(lines, start=1):
        entry, index, is_signed = _check_line(number, line, torn and number == len(lines), previous_hash,
                                              previous_index, public_keys, problems)
        previous_hash = record_hash(line)
        previous_index = previous_index + 1 if index is None else index
        if entry is None:
            continue
        owner = (entry.client_id, entry.tier)
        if entry.round_index <= last_round.get(owner, -1):
            problems.append(AuditLogProblem(number, "round_order", f"client {entry.client_id} records round "
                                            f"{entry.round_index} after round {last_round[owner]}"))
        last_round[owner] = max(entry.round_index, last_round.get(owner, -1))
        if is_signed:
            signed.append((number, entry))
    replayed = {} if replay == "none" else _replay(signed, replay, epsilon_tolerance, problems)
    problems.sort(key=lambda problem: problem.line)
    head = previous_hash  # GENESIS_HASH for an empty file
    if expected_head is not None and head != expected_head:
        problems.append(AuditLogProblem(len(lines), "head", f"the log ends at hash {head[:16]}... but the expected "
                                      f"head is {expected_head[:16]}...: records were cut off or added at the end"))
    return AuditLogVerification(records=len(lines), problems=tuple(problems), head=head, replayed_epsilon=replayed,
                              seconds=time.perf_counter() - start)


def _replay(signed: list, mode: str, tolerance: float, problems: list) -> dict[tuple[int, str], float]:
    """Replays the signed records' accounting (one PrivacyLedger per hospital and tier); flags mismatches.

    Equal histories share their epsilon: hospitals running one plan cost one accounting per round.
    """
    last_line = {(entry.client_id, entry.tier): number for number, entry in signed}
    ledgers: dict[tuple[int, str], ledger_lib.PrivacyLedger] = {}
    histories: dict[tuple[int, str], tuple] = {}
    cache: dict[tuple, float] = {}
    replayed: dict[tuple[int, str], float] = {}
    for number, entry in signed:
        owner = (entry.client_id, entry.tier)
        ledger = ledgers.setdefault(owner, ledger_lib.PrivacyLedger(unit=entry.unit))
        ledger.record_round(entry.noise_multiplier, entry.sampling_rate, entry.steps)
        release = (entry.noise_multiplier, entry.sampling_rate, entry.steps)
        history = histories[owner] = histories.get(owner, ()) + (release,)
        if mode == "last" and last_line[owner] != number:
            continue
        key = (history, entry.delta, entry.accountant)
        if key not in cache:
            cache[key] = ledger.epsilon(entry.delta, entry.accountant)
        epsilon = replayed[owner] = cache[key]
        if not (epsilon == entry.epsilon or math.isclose(epsilon, entry.epsilon, rel_tol=tolerance,
                                                         abs_tol=tolerance)):
            where = f"client {entry.client_id}" + (f" tier {entry.tier!r}" if entry.tier else "")
            problems.append(AuditLogProblem(number, "epsilon_mismatch", (
                f"{where} round {entry.round_index} records epsilon {entry.epsilon!r}, replaying "
                f"its recorded rounds with {entry.accountant} at delta {entry.delta!r} gives {epsilon!r}")))
    return replayed


def _check_line(number, line, torn, previous_hash, previous_index, public_keys, problems):
    """Checks one line against the line before; returns ``(entry or None, index or None, signed)``."""
    def problem(kind, message):
        problems.append(AuditLogProblem(number, kind, message))
    if torn:
        problem("malformed", "the last line has no newline: a torn (partial) write")
        return None, None, False
    try:
        record = json.loads(line.decode("ascii"), parse_constant=_refuse)
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
    except (UnicodeDecodeError, ValueError) as error:
        problem("malformed", f"not a JSON record ({error})")
        return None, None, False
    if canonical_json(record) != line:
        problem("not_canonical", "the line is not canonical JSON (sorted keys, no whitespace): it was rewritten")
    if record.get("format") != FORMAT:
        problem("invalid_record", f"format must be {FORMAT!r}, got {record.get('format')!r}")
    index = record.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        problem("invalid_record", f"index must be an integer, got {index!r}")
        index = None
    elif index != previous_index + 1:
        problem("index", f"index {index} follows index {previous_index}: a record was dropped, inserted or moved here")
    if record.get("previous_hash") != previous_hash:
        problem("chain", f"previous_hash {str(record.get('previous_hash'))[:16]}... is not the hash "
                f"{previous_hash[:16]}... of the line before: a record was dropped, inserted, moved or edited")
    try:
        entry = AuditEntry.from_body(record)
    except (ValueError, TypeError) as error:
        problem("invalid_record", str(error))
        return None, index, False
    key = public_keys.get(entry.client_id)
    if key is None:
        problem("unknown_client", f"client {entry.client_id} has no registered public key")
        return entry, index, False
    unsigned = {name: value for name, value in record.items() if name != "signature"}
    try:
        key.verify(bytes.fromhex(record.get("signature")), _signed_message(unsigned))
    except (InvalidSignature, TypeError, ValueError):
        problem("signature", f"the signature is not client {entry.client_id}'s over this record: the record was "
                f"edited or signed with another key")
        return entry, index, False
    return entry, index, True


def _refuse(name: str):
    raise ValueError(f"{name} is not allowed in an audit log")
