"""Signed hash-chained audit log: clean replay, every tampering kind, appends that keep what was written."""

import dataclasses
import functools
import hashlib
import json
import math
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedpriv.defenses import audit_log
from fedpriv.defenses.audit_log import AuditEntry
from fedpriv.defenses.audit_log import AuditLog
from fedpriv.defenses.audit_log import GENESIS_HASH
from fedpriv.defenses.audit_log import update_digest
from fedpriv.defenses.audit_log import verify_audit_log
from fedpriv.privacy.accountant import epsilon_for
from fedpriv.privacy.events import dp_sgd_event
from fedpriv.privacy.events import heterogeneous_event

DELTA = 1e-5
SAMPLING_RATE = 0.05
STEPS = 10
CLIENTS = 3
ROUNDS = 4


def schedule(client_id, round_index):
    # Client 2 follows a decaying noise schedule, so replay covers heterogeneous rounds too.
    return 1.2 if client_id != 2 else 1.5 - 0.1 * round_index


@functools.lru_cache(maxsize=None)
def oracle_epsilon(client_id, round_index):
    """Independent of the verifier's path: events built directly, accounted by epsilon_for."""
    sigmas = [schedule(client_id, r) for r in range(round_index + 1)]
    if len(set(sigmas)) == 1:
        event = dp_sgd_event(noise_multiplier=sigmas[0], sampling_rate=SAMPLING_RATE, steps=STEPS * len(sigmas))
    else:
        event = heterogeneous_event(sigmas, SAMPLING_RATE, steps_per_round=STEPS)
    return epsilon_for(event, delta=DELTA, accountant="rdp")


def entry(client_id, round_index, epsilon=None, **changes):
    update = np.full((3, 2), client_id + 0.25 * round_index, np.float32)
    fields = dict(round_index=round_index, client_id=client_id, update_sha256=update_digest({"w": update}),
                  l2_clip_norm=1.0, noise_multiplier=schedule(client_id, round_index), sampling_rate=SAMPLING_RATE,
                  steps=STEPS, epsilon=oracle_epsilon(client_id, round_index) if epsilon is None else epsilon,
                  delta=DELTA, accountant="rdp", unit="example")
    return AuditEntry(**{**fields, **changes})


@pytest.fixture(scope="module")
def keys():
    return {client_id: ed25519.Ed25519PrivateKey.from_private_bytes(bytes([client_id + 1]) * 32)
            for client_id in range(CLIENTS)}


@pytest.fixture(scope="module")
def public_keys(keys):
    return {client_id: key.public_key() for client_id, key in keys.items()}


@pytest.fixture()
def clean(tmp_path, keys, public_keys):
    ledger = AuditLog(tmp_path / "ledger.jsonl", public_keys)
    for round_index in range(ROUNDS):
        ledger.extend([(entry(client_id, round_index), keys[client_id]) for client_id in range(CLIENTS)])
    return ledger


def lines_of(path):
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_clean_ledger_verifies_and_replays_to_the_recorded_epsilon(clean, public_keys):
    report = verify_audit_log(clean.path, public_keys, expected_head=clean.head)
    assert report.ok, report.problems
    assert report.records == len(clean) == CLIENTS * ROUNDS
    for client_id in range(CLIENTS):
        expected = oracle_epsilon(client_id, ROUNDS - 1)
        assert report.replayed_epsilon[(client_id, "")] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert report.replayed_epsilon[(0, "")] != report.replayed_epsilon[(2, "")]  # the schedules do differ
    # Each line is canonical JSON chained to the one before.
    lines = lines_of(clean.path)
    first = json.loads(lines[0])
    assert first["previous_hash"] == GENESIS_HASH and first["index"] == 0 and first["format"] == audit_log.FORMAT
    assert json.loads(lines[5])["previous_hash"] == hashlib.sha256(lines[4]).hexdigest()
    assert lines[3] == json.dumps(json.loads(lines[3]), sort_keys=True, separators=(",", ":")).encode()
    assert clean.head == hashlib.sha256(lines[-1]).hexdigest()


def test_signatures_and_lines_are_reproducible(tmp_path, keys, public_keys):
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path in paths:
        AuditLog(path, public_keys).append(entry(0, 0), keys[0])
    assert paths[0].read_bytes() == paths[1].read_bytes()  # Ed25519 is deterministic over canonical JSON


def tamper(path, line_number, **changes):
    lines = lines_of(path)
    record = json.loads(lines[line_number - 1])
    record.update(changes)
    lines[line_number - 1] = audit_log.canonical_json(record)
    write_lines(path, lines)


def first_problem(path, public_keys, replay="none", **kwargs):
    # Structure checks skip replay by default: each distinct history costs an RDP
    # accounting (~0.1 s on a loaded 2-core machine); replay has its own tests.
    report = verify_audit_log(path, public_keys, replay=replay, **kwargs)
    assert not report.ok
    return report.problems[0], {(problem.line, problem.kind) for problem in report.problems}


def test_an_edited_record_is_caught_at_its_line(clean, public_keys):
    tamper(clean.path, 5, noise_multiplier=3.0)  # a hospital "had more noise"
    problem, found = first_problem(clean.path, public_keys)
    assert (problem.line, problem.kind) == (5, "signature")
    assert (6, "chain") in found  # the next record chained to the original line


def test_a_rewritten_but_equal_record_is_caught_as_not_canonical(clean, public_keys):
    lines = lines_of(clean.path)
    lines[6] = json.dumps(json.loads(lines[6]), sort_keys=True).encode()  # same values, spaces added
    write_lines(clean.path, lines)
    problem, _ = first_problem(clean.path, public_keys)
    assert (problem.line, problem.kind) == (7, "not_canonical")


def test_a_dropped_record_is_caught_at_its_line(clean, public_keys):
    lines = lines_of(clean.path)
    write_lines(clean.path, lines[:4] + lines[5:])
    problem, found = first_problem(clean.path, public_keys, replay="every")
    assert problem.line == 5 and {(5, "index"), (5, "chain")} <= found
    # Replay of the hospital that lost a round no longer gives its later epsilons.
    assert any(kind == "epsilon_mismatch" for _, kind in found)


def test_an_inserted_record_is_caught_at_its_line(clean, public_keys):
    lines = lines_of(clean.path)
    write_lines(clean.path, lines[:6] + [lines[2]] + lines[6:])  # a validly signed old record replayed
    problem, found = first_problem(clean.path, public_keys)
    assert problem.line == 7 and {(7, "index"), (7, "chain"), (8, "chain")} <= found


def test_reordered_records_are_caught_at_the_first_moved_line(clean, public_keys):
    lines = lines_of(clean.path)
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(clean.path, lines)
    problem, found = first_problem(clean.path, public_keys)
    assert problem.line == 4 and {(4, "index"), (4, "chain"), (5, "chain"), (6, "chain")} <= found


def test_records_cut_off_the_end_are_caught_only_with_the_expected_head(clean, public_keys):
    head = clean.head
    write_lines(clean.path, lines_of(clean.path)[:-2])
    assert verify_audit_log(clean.path, public_keys, replay="none").ok  # the chain alone cannot tell
    problem, _ = first_problem(clean.path, public_keys, expected_head=head)
    assert (problem.line, problem.kind) == (CLIENTS * ROUNDS - 2, "head")


def test_a_torn_last_line_is_caught(clean, public_keys):
    data = clean.path.read_bytes()
    clean.path.write_bytes(data[:-40])
    problem, _ = first_problem(clean.path, public_keys)
    assert (problem.line, problem.kind) == (CLIENTS * ROUNDS, "malformed")


def test_a_wrong_signing_key_is_caught(tmp_path, keys, public_keys):
    impostor = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x99" * 32)
    path = tmp_path / "ledger.jsonl"
    # The writer believes the impostor's key is client 1's; the auditor holds the real one.
    ledger = AuditLog(path, {**public_keys, 1: impostor.public_key()})
    ledger.extend([(entry(client_id, 0), keys[client_id] if client_id != 1 else impostor)
                   for client_id in range(CLIENTS)])
    problem, found = first_problem(path, public_keys)
    assert (problem.line, problem.kind) == (2, "signature") and found == {(2, "signature")}


def test_the_writer_refuses_a_key_that_is_not_the_clients(tmp_path, keys, public_keys):
    ledger = AuditLog(tmp_path / "ledger.jsonl", public_keys)
    with pytest.raises(ValueError, match="not client 1's registered key"):
        ledger.append(entry(1, 0), keys[0])
    with pytest.raises(ValueError, match="client_id 7 has no registered public key"):
        ledger.append(entry(7, 0, epsilon=1.0), keys[0])
    assert not ledger.path.exists() and len(ledger) == 0


def test_a_misreported_epsilon_is_caught_by_replay(tmp_path, keys, public_keys):
    ledger = AuditLog(tmp_path / "ledger.jsonl", public_keys)
    ledger.append(entry(0, 0), keys[0])
    honest = oracle_epsilon(0, 1)
    ledger.append(entry(0, 1, epsilon=honest * 0.9), keys[0])  # signed, chained, but under-reported
    problem, found = first_problem(ledger.path, public_keys, replay="every")
    assert (problem.line, problem.kind) == (2, "epsilon_mismatch") and found == {(2, "epsilon_mismatch")}
    assert f"{honest!r}" in problem.message
    # Off by more than 1e-9 relative is already a mismatch; exact agreement is not.
    ledger.append(entry(0, 2, epsilon=oracle_epsilon(0, 2) * (1 + 1e-7)), keys[0])
    assert (3, "epsilon_mismatch") in first_problem(ledger.path, public_keys, replay="every")[1]
    # "last" checks only each hospital's last record: line 2 goes unchecked, line 3 does not.
    assert first_problem(ledger.path, public_keys, replay="last")[1] == {(3, "epsilon_mismatch")}


def test_round_order_and_unknown_clients_are_caught(tmp_path, keys, public_keys):
    ledger = AuditLog(tmp_path / "ledger.jsonl", public_keys)
    ledger.append(entry(0, 1, epsilon=oracle_epsilon(0, 0)), keys[0])
    ledger.append(entry(0, 1, epsilon=oracle_epsilon(0, 1)), keys[0])  # round 1 twice
    problem, _ = first_problem(ledger.path, public_keys)
    assert (problem.line, problem.kind) == (2, "round_order")
    problem, _ = first_problem(ledger.path, {1: public_keys[1]})
    assert (problem.line, problem.kind) == (1, "unknown_client")


def test_infinite_epsilon_round_trips_without_nan_or_infinity_in_json(tmp_path, keys, public_keys):
    ledger = AuditLog(tmp_path / "ledger.jsonl", public_keys)
    ledger.append(entry(0, 0, noise_multiplier=0.0, epsilon=math.inf), keys[0])
    assert b'"epsilon":"inf"' in ledger.path.read_bytes()
    report = verify_audit_log(ledger.path, public_keys)
    assert report.ok and report.replayed_epsilon[(0, "")] == math.inf


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("failure", ["write", "fsync"])
def test_a_failed_append_leaves_the_file_and_the_writer_intact(clean, keys, public_keys, monkeypatch, failure):
    before, head = clean.path.read_bytes(), clean.head

    def half_then_fail(handle, data):
        handle.write(data[: len(data) // 2])
        raise Interrupted("disk full halfway")

    def fail(*args, **kwargs):
        raise Interrupted(failure)

    with monkeypatch.context() as patch:
        if failure == "write":
            patch.setattr(audit_log, "_write_all", half_then_fail)
        else:
            patch.setattr(audit_log.os, failure, fail)
        with pytest.raises(Interrupted):
            clean.extend([(entry(client_id, ROUNDS), keys[client_id]) for client_id in range(CLIENTS)])
    assert clean.path.read_bytes() == before and clean.head == head and len(clean) == CLIENTS * ROUNDS
    assert sorted(os.listdir(clean.path.parent)) == ["ledger.jsonl"]  # nothing else left behind
    clean.append(entry(0, ROUNDS), keys[0])  # the writer goes on from where the file is
    assert verify_audit_log(clean.path, public_keys, replay="none").ok


def test_reopening_continues_the_chain_and_refuses_a_tampered_file(clean, keys, public_keys):
    reopened = AuditLog(clean.path, public_keys)
    assert reopened.head == clean.head and len(reopened) == len(clean)
    reopened.append(entry(0, ROUNDS), keys[0])
    assert verify_audit_log(clean.path, public_keys, replay="none").ok
    with pytest.raises(RuntimeError, match="changed on disk"):
        clean.append(entry(1, ROUNDS), keys[1])  # the stale writer must not fork the chain
    tamper(clean.path, 2, l2_clip_norm=9.0)
    with pytest.raises(ValueError, match="line 2: signature"):
        AuditLog(clean.path, public_keys)


@pytest.mark.parametrize("changes, message", [
    (dict(noise_multiplier=-1.0), "noise_multiplier must be a finite number >= 0"),
    (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(steps=0), "steps"),
    (dict(l2_clip_norm=0.0), "l2_clip_norm"),
    (dict(delta=1.0), "delta"),
    (dict(accountant="moments"), "accountant"),
    (dict(unit="patient"), "unit"),
    (dict(epsilon=math.nan), "epsilon"),
    (dict(client_id=-1), "client_id"),
    (dict(round_index=True), "round_index"),
    (dict(update_sha256="abc"), "update_sha256"),
])
def test_bad_entries_fail_with_the_field_named(changes, message):
    with pytest.raises(ValueError, match=message):
        AuditEntry(**{**dataclasses.asdict(entry(0, 0, epsilon=1.0)), **changes})


def test_bad_keys_and_arguments_fail_clearly(tmp_path, public_keys):
    with pytest.raises(ValueError, match=r"public_keys\[0\] must be an Ed25519PublicKey"):
        AuditLog(tmp_path / "x.jsonl", {0: b"\x01" * 32})
    with pytest.raises(ValueError, match="must be"):
        AuditLog(tmp_path / "x.jsonl", public_keys).extend([("not an entry", None)])
    with pytest.raises(ValueError, match="expected_head"):
        verify_audit_log(tmp_path / "x.jsonl", public_keys, expected_head="zz")
    with pytest.raises(ValueError, match="replay must be one of"):
        verify_audit_log(tmp_path / "x.jsonl", public_keys, replay=True)


def test_update_digest_covers_values_shape_and_dtype():
    base = np.arange(6, dtype=np.float32)
    assert update_digest(base) == update_digest(base.copy())
    assert update_digest(base) != update_digest(base.reshape(2, 3))
    assert update_digest(base) != update_digest(base.astype(np.float64))
    nudged = base.copy()
    nudged[5] = np.nextafter(nudged[5], np.float32(6))  # one ulp
    assert update_digest(base) != update_digest(nudged)
    assert update_digest(base) == hashlib.sha256(b"<f4(6,)" + base.tobytes()).hexdigest()


def test_tiers_replay_separately_and_a_sat_out_round_is_recorded_as_not_joined(tmp_path, keys, public_keys):
    log = AuditLog(tmp_path / "tiers.jsonl", public_keys)
    for round_index in range(2):
        log.extend([(entry(0, round_index, tier="general"), keys[0]),
                     (entry(0, round_index, tier="genomic", noise_multiplier=1.2, sampling_rate=0.01,
                            epsilon=epsilon_for(dp_sgd_event(noise_multiplier=1.2, sampling_rate=0.01,
                                                             steps=STEPS * (round_index + 1)), delta=DELTA,
                                                accountant="rdp")), keys[0]),
                     (entry(1, round_index, joined=False, update_sha256=audit_log.NOTHING_SENT), keys[1])])
    report = verify_audit_log(log.path, public_keys)
    assert report.ok, report.problems
    assert set(report.replayed_epsilon) == {(0, "general"), (0, "genomic"), (1, "")}
    assert report.replayed_epsilon[(0, "genomic")] < report.replayed_epsilon[(0, "general")]
    assert b'"joined":false' in log.path.read_bytes()
    with pytest.raises(ValueError, match="joined"):
        entry(0, 0, joined="yes")
