"""Noise schedules and the budget ledger, end to end through the scenario."""

import pytest

from fedpriv import privacy
from tests.experiments.conftest import run_smoke

ROUNDS = 12
COMMON = {"defense": "dp_sgd", "attack": "none", "algorithm.rounds": str(ROUNDS)}


def _sampling_rate(metrics):
    return metrics["privacy.sampling_rate"]


@pytest.mark.slow  # 17 s; schedule composition is unit-tested in tests/privacy/test_schedules.py
def test_linear_schedule_run_reports_the_composed_sequence():
    metrics = run_smoke({**COMMON, "privacy": "linear_decay"}).metrics
    assert metrics["privacy.schedule"] == "linear"
    assert metrics["privacy.noise_multiplier_first_round"] == pytest.approx(2.0)
    assert metrics["privacy.noise_multiplier_last_round"] == pytest.approx(0.8)
    sequence = privacy.LinearDecaySchedule(start=2.0, end=0.8, rounds=ROUNDS).sequence(ROUNDS)
    event = privacy.heterogeneous_event(sequence, _sampling_rate(metrics))
    for accountant in ("rdp", "pld"):
        assert metrics[f"privacy.epsilon_{accountant}"] == pytest.approx(
            privacy.epsilon_for(event, delta=1e-5, accountant=accountant), rel=1e-9)


@pytest.mark.slow  # 20 s of calibration; schedules are unit-tested in tests/privacy
def test_budget_aware_schedule_spends_the_target():
    metrics = run_smoke({**COMMON, "privacy": "budget_aware", "privacy.target_epsilon": "4"}).metrics
    assert 0.99 * 4 <= metrics["privacy.epsilon_rdp"] <= 4.0
    assert metrics["privacy.noise_multiplier_last_round"] == pytest.approx(
        0.4 * metrics["privacy.noise_multiplier_first_round"], rel=1e-6)


def test_ledger_stops_training_before_the_round_that_would_exceed_the_budget():
    metrics = run_smoke({**COMMON, "privacy": "linear_decay", "privacy.stop_on_budget": "true",
                         "privacy.target_epsilon": "1.0"}).metrics
    rounds_run = metrics["train.rounds_run"]
    assert 0 < rounds_run < ROUNDS and metrics["privacy.stopped"] is True
    assert metrics["privacy.stop_round"] == rounds_run and "budget" in metrics["train.stop_reason"]
    sequence = privacy.LinearDecaySchedule(start=2.0, end=0.8, rounds=ROUNDS).sequence(ROUNDS)
    spent = privacy.epsilon_for(privacy.heterogeneous_event(sequence[:rounds_run], _sampling_rate(metrics)),
                                delta=1e-5, accountant="rdp")
    one_more = privacy.epsilon_for(privacy.heterogeneous_event(sequence[:rounds_run + 1], _sampling_rate(metrics)),
                                   delta=1e-5, accountant="rdp")
    assert spent <= 1.0 < one_more
    assert metrics["privacy.epsilon_rdp"] == pytest.approx(spent, rel=1e-9)


@pytest.mark.slow  # 16 s; the ledger's spend and stop are tested in tests/defenses/test_plans.py and above
def test_ledger_with_a_constant_calibrated_plan_runs_every_round():
    # Each round records its own local steps: the calibrated run spends its budget only at the end.
    metrics = run_smoke({**COMMON, "privacy.stop_on_budget": "true", "privacy.target_epsilon": "3"}).metrics
    assert metrics["train.rounds_run"] == ROUNDS and metrics["privacy.stopped"] is False
    assert 0.99 * 3 <= metrics["privacy.epsilon_rdp"] <= 3.0


def test_a_schedule_that_goes_negative_fails_before_compute():
    from experiments.build import build_scenario
    from tests.experiments.conftest import compose_smoke
    with pytest.raises(ValueError, match="end|noise_multiplier|negative"):
        build_scenario(compose_smoke({**COMMON, "privacy": "linear_decay", "privacy.schedule.end": "-0.5"}))


@pytest.mark.slow  # the estimators and canaries are tested in tests/privacy
def test_audit_of_the_run_plan_stays_below_its_one_step_epsilon():
    metrics = run_smoke({**COMMON, "privacy.audit_trials": "2000", "privacy.target_epsilon": "3"}).metrics
    assert metrics["audit.method"] == "clopper_pearson"
    assert 0.0 <= metrics["audit.epsilon_lower_bound"] <= metrics["audit.accountant_epsilon"]
    assert metrics["audit.exceeds_accountant"] is False
