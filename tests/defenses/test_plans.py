"""The privacy-plan protocol: every plan answers the same questions; forbidden combinations are
refused before compute; DP weights are public; the ledger and the audit log replay to the plan."""

import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.audit_log import verify_audit_log
from fedpriv.defenses.audit_log_recorder import AuditLogRecorder
from fedpriv.defenses.local_dp import LocalDPPlan
from fedpriv.defenses.plans import (CombinedPrivacyConfig, Composition, DPFedAvgConfig, DPSGDConfig, LocalDPConfig,
                                    NoPrivacyConfig, PlanLedger, PrivacyPlan, Refused, RunShape, TieredDPSGDConfig)
from fedpriv.privacy import accountant

DELTA = 1e-5
SHAPE = RunShape(rounds=6, local_steps=2, batch_size=4, hospital_sizes=(40, 40, 40, 40))
TIERED_SHAPE = RunShape(rounds=6, local_steps=2, batch_size=4, hospital_sizes=(40, 40, 40, 40),
                        tier_names=("general", "genomic"))

CONFIGS = {
    "none": NoPrivacyConfig(),
    "dp_sgd": DPSGDConfig(l2_clip_norm=1.0, target_epsilon=4.0, delta=DELTA),
    "dp_sgd_scheduled": DPSGDConfig(l2_clip_norm=1.0, target_epsilon=4.0, delta=DELTA,
                                    schedule={"kind": "linear", "start": 2.0, "end": 1.0, "rounds": 6}),
    "tiered_dp_sgd": TieredDPSGDConfig(budgets={"general": 8.0, "genomic": 2.0}, l2_clip_norm=1.0, delta=DELTA),
    "dp_fedavg": DPFedAvgConfig(l2_clip_norm=0.5, target_epsilon=4.0, delta=DELTA),
    "local_dp": LocalDPConfig(mechanism=LocalDPPlan(mechanism="gaussian", epsilon=8.0, delta=DELTA, l2_clip_norm=1.0),
                              delta=DELTA),
}


@functools.lru_cache(maxsize=None)  # plans are frozen; calibrating the tiered one takes ~2 s
def make(name):
    return CONFIGS[name].make(TIERED_SHAPE if name == "tiered_dp_sgd" else SHAPE)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_plan_answers_every_question_of_the_protocol(name):
    plan = make(name)
    assert isinstance(plan, PrivacyPlan)
    assert plan.batch_sampling.kind in ("shuffle", "poisson") and plan.batch_sampling.capacity >= 1
    noise = plan.round_noise(3)
    assert (noise.local is not None) == (plan.local_mechanism is not None)
    assert (noise.server is not None) == (plan.server_noise() is not None)
    report = plan.report()
    assert report["privacy.unit"] in ("none", "example", "client")
    assert (report["privacy.epsilon"] == math.inf) == (name == "none")
    assert (plan.dp_event() is None) == (name == "none")
    assert plan.update_noise_stddev(0, learning_rate=1.0, local_steps=2) >= 0.0
    assert all(entry.noise_multiplier > 0 for entry in plan.ledger_rounds(0).values())


# -- refusals: the plan x stage grid ------------------------------------------------------------

OPTIONS = {
    "screening": Composition(server_stages=("screening",)),
    "robust_aggregation": Composition(server_stages=("robust_aggregation",)),
    "secure_aggregation": Composition(protocol="secure_aggregation"),
    "homomorphic": Composition(protocol="homomorphic"),
    "examples_weighting": Composition(weighting="examples"),
    "fixed_size_cohorts": Composition(client_selection="fixed_size"),
    "poisson_clients": Composition(client_selection="poisson"),
    "stop_on_budget": Composition(stop_on_budget=True),
    "audit_log": Composition(audit_log=True),
}
# (plan, option) -> a pattern the refusal must name. Everything else composes.
REFUSED = {
    ("none", "stop_on_budget"): "no budget", ("none", "audit_log"): "releases none",
    **{(plan, "examples_weighting"): "public constants" for plan in CONFIGS if plan != "none"},
    ("tiered_dp_sgd", "stop_on_budget"): "every tier",
    ("dp_fedavg", "screening"): "sensitivity", ("dp_fedavg", "robust_aggregation"): "sensitivity",
    ("dp_fedavg", "fixed_size_cohorts"): "Poisson client sampling",
    ("local_dp", "stop_on_budget"): "not Gaussian rounds", ("local_dp", "audit_log"): "not Gaussian rounds",
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forbidden_combinations_are_refused_naming_both_and_the_rest_compose(name, option):
    plan = make(name)
    pattern = REFUSED.get((name.replace("_scheduled", ""), option))
    if pattern is None:
        plan.check_composition(OPTIONS[option])
        return
    with pytest.raises(Refused) as caught:
        plan.check_composition(OPTIONS[option])
    message = str(caught.value)
    assert f"privacy plan {plan.name!r} does not compose with" in message and pattern in message


def test_combined_plans_refuse_what_any_part_refuses_and_report_each_unit():
    combined = CombinedPrivacyConfig(parts=(CONFIGS["dp_sgd"], CONFIGS["dp_fedavg"])).make(SHAPE)
    assert combined.units == ("example", "client")
    with pytest.raises(Refused, match="dp_fedavg"):
        combined.check_composition(OPTIONS["screening"])
    report = combined.report()
    assert report["privacy.unit"] == "example" and report["privacy.dp_fedavg.unit"] == "client"
    assert combined.batch_sampling.kind == "poisson" and combined.server_noise() is not None
    # Compression goes before DP-FedAvg's clip (last): the sum's sensitivity stays the clip norm.
    compression = types.SimpleNamespace(transform=lambda key: None)
    stages = combined.client_update_stages(compression)
    assert stages[0] is compression and type(stages[-1]).__name__ == "ClipUpdate"


# -- public aggregation weights ------------------------------------------------------------------

@pytest.mark.parametrize("name", [name for name in CONFIGS if name != "none"])
def test_dp_aggregation_weights_never_depend_on_realised_counts(name):
    plan = make(name)
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = jnp.asarray(rng.random(6) < 0.7, jnp.float32)
        first = plan.aggregation_weights("uniform", mask, jnp.asarray(rng.integers(0, 9, 6), jnp.float32))
        second = plan.aggregation_weights("uniform", mask, jnp.asarray(rng.integers(0, 9, 6), jnp.float32))
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(first, mask)  # a hospital that sampled nothing still counts


def test_identical_noisy_updates_move_the_model_the_same_whatever_was_sampled():
    # The case: two hospitals, identical noisy updates; hospital 0 sampled 1, 3 or 0 records.
    from fedpriv.defenses.server_stages import PlaintextSum, RoundAggregate, StageContext, WeightedMean
    plan = make("dp_sgd")
    means = []
    for sampled in (1.0, 3.0, 0.0):
        weights = plan.aggregation_weights("uniform", jnp.ones(2), jnp.asarray([sampled, 2.0]))
        aggregate = RoundAggregate(messages={"w": jnp.asarray([1.0, 1.0])}, weights=weights)
        aggregate, _, _ = PlaintextSum().update(aggregate, (), StageContext())
        aggregate, _, _ = WeightedMean().update(aggregate, (), StageContext())
        means.append(float(aggregate.mean_update["w"]))
    assert means == [1.0, 1.0, 1.0]


# -- ledger and audit log replay to the plan ----------------------------------------------------------

def _record_run(tmp_path, plan, rounds, participation):
    recorder = AuditLogRecorder(tmp_path / "audit.jsonl", plan=plan, num_clients=participation.shape[1],
                                l2_clip_norm=1.0, delta=DELTA, accountant="rdp")
    sent = {"w": jnp.zeros((participation.shape[1], 3))}
    for round_index in range(rounds):
        recorder.after_round(round_index, participation[round_index],
                             types.SimpleNamespace(sent=sent, aborted=False))
    return verify_audit_log(recorder.path, recorder.public_keys, replay="last")


@pytest.mark.parametrize(("rounds", "expected_epsilon"), [
    pytest.param(20, None),
    # The case (about 20 s: every round's record composes the accountant afresh).
    pytest.param(100, 7.90, marks=pytest.mark.slow),
])
def test_audit_log_replays_to_the_plans_epsilon_under_client_sampling(tmp_path, rounds, expected_epsilon):
    # q = 0.1, sigma 1, a hospital that joined one round in ten: the case at 100 rounds
    # has plan epsilon (RDP) 7.90, not 3.44 (joined rounds, amplified) nor 19.05 (conditional).
    shape = RunShape(rounds=rounds, local_steps=1, batch_size=1, hospital_sizes=(4, 4), client_selection="poisson",
                     client_sampling_rate=0.1)
    plan = DPFedAvgConfig(l2_clip_norm=1.0, noise_multiplier=1.0, target_epsilon=1.0, delta=DELTA).make(shape)
    participation = np.zeros((rounds, 2), bool)
    participation[::10, 0] = True
    verification = _record_run(tmp_path, plan, rounds, participation)
    assert verification.ok
    planned = plan.report()["privacy.epsilon_rdp"]
    if expected_epsilon is not None:
        assert planned == pytest.approx(expected_epsilon, abs=0.01)
    for epsilon in verification.replayed_epsilon.values():
        assert epsilon == pytest.approx(planned, rel=1e-9)


@pytest.mark.parametrize("name", ["dp_sgd", "dp_sgd_scheduled",
                                  pytest.param("tiered_dp_sgd", marks=pytest.mark.slow)])  # tiers: 21 s
def test_audit_log_replays_to_the_plan_for_schedules_and_tiers(tmp_path, name):
    plan = make(name)
    participation = np.ones((SHAPE.rounds, 2), bool)
    verification = _record_run(tmp_path, plan, SHAPE.rounds, participation)
    assert verification.ok
    report = plan.report()
    for (client, tier), epsilon in verification.replayed_epsilon.items():
        expected = report[f"privacy.tier.{tier}.epsilon"] if tier else report["privacy.epsilon_rdp"]
        if tier:  # the tier report is the min of RDP and PLD; the log replays RDP
            tier_rdp = plan.local_mechanism.tier_reports(DELTA)[tier].epsilon_rdp
            expected = tier_rdp
        assert epsilon == pytest.approx(expected, rel=1e-9)


def test_stop_on_budget_ledger_spends_what_the_log_replays_and_stays_within_budget(tmp_path):
    shape = RunShape(rounds=20, local_steps=2, batch_size=4, hospital_sizes=(40, 40, 40, 40))
    plan = DPSGDConfig(l2_clip_norm=1.0, noise_multiplier=1.2, target_epsilon=3.0, delta=DELTA).make(shape)
    ledger = PlanLedger(plan, delta=DELTA, accountant="rdp")
    recorder = AuditLogRecorder(tmp_path / "audit.jsonl", plan=plan, num_clients=2, l2_clip_norm=1.0, delta=DELTA,
                                accountant="rdp")
    rounds = 0
    while rounds < shape.rounds and not ledger.stop_reason(rounds):
        recorder.after_round(rounds, np.ones(2, bool), types.SimpleNamespace(sent={"w": jnp.zeros((2, 1))}))
        rounds += 1
    assert 0 < rounds < shape.rounds  # the budget stopped it
    spent = ledger.spent()
    assert spent["privacy.epsilon_rdp"] <= 3.0
    verification = verify_audit_log(recorder.path, recorder.public_keys, replay="last")
    assert verification.ok
    for epsilon in verification.replayed_epsilon.values():
        assert epsilon == pytest.approx(spent["privacy.epsilon_rdp"], rel=1e-9)


def test_local_dp_reports_its_whole_run_epsilon_with_its_unit():
    report = make("local_dp").report()
    assert report["privacy.unit"] == "client" and report["privacy.relation"] == "replace_one_local"
    mechanism = CONFIGS["local_dp"].mechanism
    assert report["privacy.epsilon"] == pytest.approx(mechanism.epsilon_after(SHAPE.rounds, delta=DELTA,
                                                                              accountant="pld"))
    assert mechanism.epsilon < report["privacy.epsilon"] < SHAPE.rounds * mechanism.epsilon


def test_dp_sgd_report_matches_dp_accounting_for_the_configured_run():
    plan = make("dp_sgd")
    event = plan.dp_event()
    assert plan.report()["privacy.epsilon_rdp"] == pytest.approx(
        accountant.epsilon_for(event, delta=DELTA, accountant="rdp"), rel=1e-12)
    assert plan.report()["privacy.steps"] == SHAPE.rounds * SHAPE.local_steps


def test_an_untiered_poisson_plan_samples_records_of_every_tier_at_its_one_rate():
    # EHR records carry tier ids 0-2 even when the plan is plain DP-SGD (one rate for all).
    from fedpriv.defenses.plans import BatchSampling
    untiered = BatchSampling(kind="poisson", capacity=4, tier_rates=(0.05,))
    np.testing.assert_array_equal(untiered.record_rates(np.array([0, 2, 1, 0])), [0.05] * 4)
    tiered = BatchSampling(kind="poisson", capacity=4, tier_rates=(0.05, 0.02, 0.01))
    np.testing.assert_array_equal(tiered.record_rates(np.array([0, 2, 1])), [0.05, 0.01, 0.02])
    assert BatchSampling(kind="shuffle", capacity=4).record_rates(np.array([0, 1])) is None
