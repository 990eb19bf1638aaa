"""A run killed mid-training and started again resumes from its last intact checkpoint and ends
bit-identical to an uninterrupted run: params, records, ledger and audit log (DESIGN §5).

A kill after round 3 is simulated in two ways: an observer copies the run's folder at that
moment (what a kill leaves on disk: checkpoints up to step 2, the audit log with round 3's
records; the run itself goes on and is the uninterrupted oracle, one compiled run for
both), or an observer raises there (``-m slow``, against a run without checkpoints). Either
way the host parties are AHEAD of the last checkpoint, the hard case for a resume. Every
run is a tiny MLP of 3 hospitals; a compiled run costs about 3 s, so the default run holds two.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.audit_log_recorder import AuditLogRecorder
from fedpriv.defenses.model_screening import ModelScreeningConfig
from fedpriv.defenses.plans import DPFedAvgConfig, PlanLedger, RunShape
from fedpriv.defenses.server_stages import ServerPipeline
from fedpriv.federated import (FederatedConfig, Federation, LocalTrainingConfig, TrainingHooks, TrainingKeys,
                               train)
from fedpriv.federated import state_codec
from fedpriv.federated.checkpoints import CheckpointMismatchError, RoundCheckpoints
from fedpriv.federated.defense_stack import HospitalModelScreens
from fedpriv.models import make_model
from fedpriv.typing import ClientData

ROUNDS, CLIENTS, KILL_AT, EVERY = 6, 3, 4, 2
INPUT_SHAPE = (4, 4, 1)
MODEL = make_model("mlp", input_shape=INPUT_SHAPE, num_classes=3, hidden_sizes=[8])
KEYS = TrainingKeys(sampling=jax.random.key(1), clients=jax.random.key(2), server=jax.random.key(3))
FINGERPRINT = {"config.seed": 0, "config.algorithm.rounds": ROUNDS}


class Killed(RuntimeError):
    """The simulated preemption."""


@dataclasses.dataclass
class KillAfter:
    """An observer that kills the run once round ``round_index`` has run."""

    round_index: int

    def after_round(self, round_index, participating, outcome):
        if round_index == self.round_index:
            raise Killed(f"killed after round {round_index}")


@dataclasses.dataclass
class SnapshotAfter:
    """An observer that copies the run's folder to ``target`` once round ``round_index`` has
    run: what a process killed at that moment leaves on disk, once the checkpoint in flight
    is committed (a kill mid-commit is the torn case, tested on its own)."""

    round_index: int
    source: Path
    target: Path
    checkpoints: RoundCheckpoints | None = None

    def after_round(self, round_index, participating, outcome):
        if round_index == self.round_index:
            self.checkpoints.wait()
            shutil.copytree(self.source, self.target)


class DrawnRounds:
    """Round data drawn from ONE generator that advances every round: a stateful host party
    (``HostParty``) whose state must be checkpointed for the resumed rounds to get the same data."""

    def __init__(self):
        self.generator = np.random.default_rng(7)

    def __call__(self, round_index, participating):
        x = self.generator.normal(size=(CLIENTS, 1, 2, *INPUT_SHAPE)).astype(np.float32)
        y = self.generator.integers(0, 3, size=(CLIENTS, 1, 2)).astype(np.int32)
        mask = np.broadcast_to(participating[:, None, None], (CLIENTS, 1, 2)).astype(np.float32)
        return ClientData(examples={"x": x, "y": y}, example_mask=mask, client_mask=participating.astype(np.float32),
                          record_ids=np.where(mask > 0, 0, -1).astype(np.int32))

    def checkpoint_state(self):
        return {"bit_generator": self.generator.bit_generator.state}

    def restore_state(self, state):
        self.generator.bit_generator.state = state["bit_generator"]


def _config(**changes) -> FederatedConfig:
    settings = dict(algorithm="fedavg", rounds=ROUNDS, clients_per_round=None, local_steps=1, batch_size=2,
                    local=LocalTrainingConfig(learning_rate=0.1), server_optimizer="adam", server_learning_rate=0.01,
                    backend="vmap", private_head=True)
    return FederatedConfig(**{**settings, **changes})


def _run(folder: Path, *, watcher=None, checkpointed=True, config=None, fingerprint=FINGERPRINT):
    """Everything that carries state at once: DP-FedAvg (its noise key in a stage state), the
    adam server, a private head per hospital, a stateful data party, two observed rounds, a
    stop-on-budget ledger (it stops the run before round 4), the hospitals' model screens
    and the signed audit log. Returns the result and the host parties."""
    config = config or _config()
    shape = RunShape(rounds=config.rounds, local_steps=1, batch_size=2, hospital_sizes=(8,) * CLIENTS,
                     client_selection="all", client_sampling_rate=1.0)
    plan = DPFedAvgConfig(l2_clip_norm=0.5, noise_multiplier=2.0, target_epsilon=5.0, delta=1e-5).make(shape)
    federation = Federation(model=MODEL, config=config, plan=plan, num_clients=CLIENTS,
                            client_stages=plan.client_update_stages(None),
                            pipeline=ServerPipeline(aggregator=plan.server_noise()))
    folder.mkdir(exist_ok=True)
    checkpoints = (RoundCheckpoints(folder / "checkpoints", every=EVERY, fingerprint=fingerprint)
                   if checkpointed else None)
    resume = checkpoints is not None and checkpoints.latest() is not None
    recorder = AuditLogRecorder(folder / "audit_log.jsonl", plan=plan, num_clients=CLIENTS, l2_clip_norm=0.5,
                                delta=1e-5, accountant="rdp", resume=resume)
    ledger = PlanLedger(plan, delta=1e-5, accountant="rdp")
    screens = HospitalModelScreens(config=ModelScreeningConfig(min_history=2), num_clients=CLIENTS)
    if isinstance(watcher, SnapshotAfter):
        watcher.checkpoints = checkpoints
    observers = (recorder,) if watcher is None else (recorder, watcher)
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, *INPUT_SHAPE)))
    result = train(federation, params=params, data=DrawnRounds(), keys=KEYS, checkpoints=checkpoints,
                   observe_rounds=(1, 3), hooks=TrainingHooks(budget=ledger, model_screen=screens, observers=observers))
    return Run(result, ledger, screens, recorder, folder)


@dataclasses.dataclass
class Run:
    result: object
    ledger: PlanLedger
    screens: HospitalModelScreens
    recorder: AuditLogRecorder
    folder: Path


def _assert_same_tree(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))


def _assert_same_state(a, b):
    """Two host states encode to the same skeleton and the same arrays."""
    (skeleton_a, arrays_a), (skeleton_b, arrays_b) = state_codec.encode(a), state_codec.encode(b)
    assert skeleton_a == skeleton_b
    assert state_codec.digest(skeleton_a, arrays_a) == state_codec.digest(skeleton_b, arrays_b)


def _unsigned_records(path: Path) -> list[dict]:
    """The audit log's records without what depends on the hospitals' fresh keys."""
    return [{key: value for key, value in json.loads(line).items() if key not in ("signature", "previous_hash")}
            for line in path.read_text().splitlines()]


def _assert_same_run(resumed: Run, uninterrupted: Run):
    ours, theirs = resumed.result, uninterrupted.result
    _assert_same_tree(ours.params, theirs.params)
    _assert_same_tree(ours.private_heads, theirs.private_heads)
    assert (ours.rounds_run, ours.stop_reason, ours.rounds_aborted) == (
        theirs.rounds_run, theirs.stop_reason, theirs.rounds_aborted)
    _assert_same_state(ours.round_stats, theirs.round_stats)
    assert sorted(ours.observations) == sorted(theirs.observations) == [1, 3]
    for index, observation in theirs.observations.items():
        assert ours.observations[index].metadata == observation.metadata
        _assert_same_tree((ours.observations[index].params, ours.observations[index].updates),
                          (observation.params, observation.updates))
        _assert_same_tree(ours.observed_data[index], theirs.observed_data[index])
    assert resumed.ledger.spent() == uninterrupted.ledger.spent()
    _assert_same_state(resumed.screens.checkpoint_state(), uninterrupted.screens.checkpoint_state())
    verified, expected = resumed.recorder.verify(), uninterrupted.recorder.verify()
    assert verified["audit_log.verified"] and verified["audit_log.problems"] == 0
    for key in ("audit_log.records", "audit_log.max_replayed_epsilon"):
        assert verified[key] == expected[key]
    assert _unsigned_records(resumed.folder / "audit_log.jsonl") == _unsigned_records(
        uninterrupted.folder / "audit_log.jsonl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run, and the folder a run killed after round 3 (before the
    checkpoint of step 4) leaves behind; each test resumes from its own copy."""
    folder, killed = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("killed") / "run"
    uninterrupted = _run(folder, watcher=SnapshotAfter(3, folder, killed))
    assert uninterrupted.result.stop_reason and uninterrupted.result.rounds_run == 4  # the budget stopped it
    return uninterrupted, killed


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def _steps(folder: Path) -> list[int]:
    return sorted(int(path.name) for path in folder.iterdir() if path.name.isdigit())


def test_killed_run_resumes_bit_identical(runs, tmp_path):
    uninterrupted, killed = runs
    assert _steps(killed / "checkpoints") == [0, 2]  # the newest two; round 3 ran, step 4 was not written yet
    assert _steps(uninterrupted.folder / "checkpoints") == [2, 4]
    killed_records = len(_unsigned_records(killed / "audit_log.jsonl"))
    folder = _copy(killed, tmp_path)
    resumed = _run(folder)
    assert resumed.result.resumed_from_round == 2 and len(resumed.result.checkpoint_seconds) == 1  # step 4
    assert uninterrupted.result.resumed_from_round is None and len(uninterrupted.result.checkpoint_seconds) == 3
    assert len(_unsigned_records(folder / "audit_log.jsonl")) < killed_records + 1  # cut back, then rewritten
    _assert_same_run(resumed, uninterrupted)
    again = _run(folder)  # a finished run started again: it stopped at round 4 and stays stopped
    assert again.result.resumed_from_round == 4 and again.result.checkpoint_seconds == []
    _assert_same_run(again, uninterrupted)


def _tear(step_folder: Path) -> None:
    """Edits a step's content behind its SHA-256 (a torn write the storage layer still reads)."""
    state = step_folder / "state" / "metadata"
    document = json.loads(state.read_text())
    document["skeleton"]["$dict"][-1][1] = "edited"
    state.write_text(json.dumps(document))


def test_torn_checkpoint_is_skipped(runs, tmp_path):
    checkpoints = _copy(runs[1], tmp_path) / "checkpoints"
    _tear(checkpoints / "2")
    (checkpoints / "4.orbax-checkpoint-tmp-1").mkdir()  # an unfinished write: never a step
    latest = RoundCheckpoints(checkpoints, every=EVERY, fingerprint=FINGERPRINT).latest()
    assert latest is not None and latest.step == 0
    assert _steps(checkpoints) == [0]  # the torn step is deleted: the resumed run writes it again


def test_unreadable_checkpoint_is_skipped(runs, tmp_path):
    checkpoints = _copy(runs[1], tmp_path) / "checkpoints"
    (checkpoints / "2" / "state" / "metadata").write_text('{"format": ')  # cut mid-write
    latest = RoundCheckpoints(checkpoints, every=EVERY, fingerprint=FINGERPRINT).latest()
    assert latest is not None and latest.step == 0


@pytest.mark.slow  # two more compiled runs
def test_run_killed_by_an_exception_resumes_like_a_run_without_checkpoints(runs, tmp_path):
    without_checkpoints = _run(tmp_path / "plain", checkpointed=False)
    _assert_same_run(without_checkpoints, runs[0])  # checkpointing itself changes nothing
    with pytest.raises(Killed):
        _run(tmp_path / "killed", watcher=KillAfter(3))
    resumed = _run(tmp_path / "killed")
    assert resumed.result.resumed_from_round == 2
    _assert_same_run(resumed, without_checkpoints)


@pytest.mark.slow  # one more compiled run
def test_resume_past_a_torn_checkpoint_is_bit_identical(runs, tmp_path):
    folder = _copy(runs[1], tmp_path)
    _tear(folder / "checkpoints" / "2")
    resumed = _run(folder)  # from the state before round 0: the audit log is cut back to nothing
    assert resumed.result.resumed_from_round == 0
    _assert_same_run(resumed, runs[0])


def test_checkpoint_of_another_config_is_refused(runs, tmp_path):
    checkpoints = runs[1] / "checkpoints"
    with pytest.raises(CheckpointMismatchError, match=r"config\.algorithm\.rounds: 6 in the checkpoint, 7 now"):
        RoundCheckpoints(checkpoints, every=EVERY, fingerprint={**FINGERPRINT, "config.algorithm.rounds": 7}).latest()
    with pytest.raises(CheckpointMismatchError, match=r"training setup: .*rounds: 6 in the checkpoint, 7 now"):
        _run(_copy(runs[1], tmp_path), config=_config(rounds=7), fingerprint=FINGERPRINT)


def test_codec_round_trips_what_the_loop_carries():
    from fedpriv.defenses.anomaly import VaeConfig, VaeDetector
    from fedpriv.defenses.model_screening import ModelHistory
    from fedpriv.defenses.server_stages import ScreeningState
    detector = VaeDetector(params={"w": jnp.ones(2)}, offset=np.zeros(3), scale=np.ones(3), threshold=float("inf"),
                           config=VaeConfig())
    value = {0: ModelHistory(previous={"w": np.arange(3.0)}, log_changes={"['w']": (0.5, float("inf"))}),
             "screen": (ScreeningState(benign=[np.ones((2, 3), np.float32)], detector=detector), jax.random.key(4)),
             "key": jax.random.key(5), "empty": np.zeros((0, 2), np.float32), "scalar": np.float32(1.5),
             "jax": jnp.ones((2,), jnp.bfloat16), "nested": [(1, "a", None, True)], "big": 2 ** 100,
             "weak": jnp.asarray(0.5),
             "stats": {"count": np.asarray(3, np.int32), "norm": np.asarray(np.inf, np.float32),
                       "flag": np.bool_(True), "device": jnp.asarray(7, jnp.uint32)}}
    skeleton, arrays = state_codec.encode(value)
    json.dumps(skeleton)
    back = state_codec.decode(json.loads(json.dumps(skeleton)), arrays)
    assert isinstance(back[0], ModelHistory) and back[0].log_changes == value[0].log_changes
    assert np.array_equal(back[0].previous["w"], value[0].previous["w"])
    assert jnp.issubdtype(back["key"].dtype, jax.dtypes.prng_key)
    assert np.array_equal(jax.random.key_data(back["key"]), jax.random.key_data(value["key"]))
    assert back["empty"].shape == (0, 2) and type(back["scalar"]) is np.float32 and back["scalar"] == 1.5
    assert isinstance(back["jax"], jax.Array) and back["jax"].dtype == jnp.bfloat16
    assert back["nested"] == [(1, "a", None, True)] and back["big"] == 2 ** 100
    assert back["weak"].aval.weak_type and back["weak"].dtype == jnp.float32  # dtype promotion unchanged
    for name, original in value["stats"].items():  # stored inline in the skeleton, type and dtype kept
        assert type(back["stats"][name]) is type(original) and back["stats"][name].dtype == original.dtype
        assert back["stats"][name] == original
    screen, _ = back["screen"]
    assert isinstance(screen, ScreeningState) and isinstance(screen.detector, VaeDetector)
    assert screen.detector.config == VaeConfig() and screen.detector.threshold == float("inf")
    assert all(np.ndim(array) > 0 for array in arrays.values())  # scalars go inline, never one array each
    with pytest.raises(TypeError, match=r"state\[.unknown.\]: cannot checkpoint"):
        state_codec.encode({"unknown": object()})
    with pytest.raises(ValueError, match="refusing to load"):
        state_codec.decode({"$dataclass": "os:system", "fields": {}}, {})


# -- the scenario and the command line -------------------------------------------------------------


def test_run_fingerprint_ignores_impl_and_checkpoint_knobs():
    from experiments.build import build_scenario, run_fingerprint
    from tests.experiments.conftest import compose_config

    config = compose_config(["checkpoint.every=50"])
    base = run_fingerprint(config)
    assert base == run_fingerprint(compose_config(["impl=loop", "checkpoint.every=5", "checkpoint.keep=3"]))
    changed = _with(config, seed=1)
    assert [key for key in base if base[key] != run_fingerprint(changed)[key]] == ["config.seed"]
    assert not any(key.startswith(("config.impl", "config.checkpoint")) for key in base)
    assert "config.algorithm.backend" not in base  # an interpolated impl knob
    scenario = build_scenario(config, "/nonexistent/run")
    assert (scenario.checkpoint.every, scenario.checkpoint.directory, scenario.checkpoint.keep) == (50, None, 2)
    assert build_scenario(_with(config, **{"checkpoint.every": None}), "/nonexistent/run").checkpoint is None
    with pytest.raises(ValueError, match=r"checkpoint\.every must be an integer >= 1 .*got 0"):
        build_scenario(_with(config, **{"checkpoint.every": 0}), "/nonexistent/run")
    with pytest.raises(ValueError, match="secure_randomness"):
        build_scenario(_with(config, **{"privacy.secure_randomness": True}), "/nonexistent/run")


def _with(config, **changes):
    """A copy of a composed config with dotted keys changed (cheaper than composing again)."""
    from omegaconf import OmegaConf

    changed = config.copy()
    for key, value in changes.items():
        OmegaConf.update(changed, key, value)
    return changed


def _comparable(metrics: dict) -> dict:
    """Metrics that an interrupted run must share with an uninterrupted one: not the wall
    clock, not the checkpoints' own record, not what depends on the hospitals' fresh keys."""
    skipped = ("checkpoint.", "audit_log.head", "audit_log.path")
    return {key: value for key, value in metrics.items()
            if ".seconds" not in key and not key.startswith(skipped) and key != "outputs"}


@pytest.mark.slow  # three smoke scenarios
def test_scenario_killed_and_run_again_in_its_folder_gives_the_same_metrics(tmp_path, monkeypatch):
    from experiments.build import build_scenario
    from fedpriv.federated import training
    from fedpriv.scenario import run_scenario
    from tests.experiments.conftest import compose_config, smoke_overrides

    config = compose_config(smoke_overrides({"algorithm.rounds": "4", "defense": "audited_dp_sgd",
                                             "privacy.stop_on_budget": "true", "checkpoint.every": "2"}))
    uninterrupted = run_scenario(build_scenario(config, str(tmp_path)))
    run_round = training._Loop.run_round

    def killed_after_round_2(loop, round_function, round_index, *carried):
        outcome = run_round(loop, round_function, round_index, *carried)
        if round_index == 2:
            raise Killed("killed after round 2")
        return outcome

    folder = tmp_path / "killed"
    folder.mkdir()
    monkeypatch.setattr(training._Loop, "run_round", killed_after_round_2)
    with pytest.raises(Killed):
        run_scenario(build_scenario(config, str(folder)))
    monkeypatch.undo()
    resumed = run_scenario(build_scenario(config, str(folder)))
    assert resumed.metrics["checkpoint.resumed_from_round"] == 2
    assert _comparable(resumed.metrics) == _comparable(uninterrupted.metrics)
    assert np.array_equal(resumed.reconstructed, uninterrupted.reconstructed)


@pytest.mark.slow  # two command-line runs
def test_command_run_again_into_its_folder_resumes(tmp_path):
    import subprocess
    import sys

    from tests.experiments.conftest import RUN, smoke_overrides

    command = [sys.executable, str(RUN), *smoke_overrides({"algorithm.rounds": "3", "checkpoint.every": "1"}),
               f"hydra.run.dir={tmp_path}"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert _steps(tmp_path / "checkpoints") == [2, 3]
    shutil.rmtree(tmp_path / "checkpoints" / "3")  # as if killed before the last checkpoint,
    (tmp_path / "metrics.json").unlink()  # so before writing its metrics
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    second = json.loads((tmp_path / "metrics.json").read_text())
    assert second["checkpoint.resumed_from_round"] == 2 and first["checkpoint.resumed_from_round"] is None
    assert _comparable(second) == _comparable(first)
