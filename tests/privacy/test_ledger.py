"""The privacy ledger: it agrees with the events, stops at the right round, and reports.

Oracles: epsilon_for on dp_sgd_event (constant rounds) and on a hand-built per-round
ComposedDpEvent (varying rounds), both accounted by dp-accounting 0.6.0; the cross-silo
pinned value (reference README: sigma 2, q 1, 100 rounds -> RDP 35.0818); and
affordable_rounds for where a constant run must stop.
"""

import doctest
import json
import math

import dp_accounting
import pytest

from fedpriv import privacy
from fedpriv.privacy import ledger as ledger_lib

DELTA = 1e-5


def hand_built(rounds):
    """One event per (noise_multiplier, sampling_rate, steps) round, nothing grouped."""
    events = []
    for sigma, rate, steps in rounds:
        release = dp_accounting.GaussianDpEvent(sigma)
        if rate < 1:
            release = dp_accounting.PoissonSampledDpEvent(rate, release)
        events.extend([release] * steps)
    return dp_accounting.ComposedDpEvent(events)


def test_module_examples():
    result = doctest.testmod(ledger_lib)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_constant_rounds_equal_the_dp_sgd_event(accountant):
    ledger = privacy.PrivacyLedger(unit="example", delta=DELTA, accountant=accountant)
    for _ in range(50):
        ledger.record_round(1.1, 0.01, steps=2)
    expected_event = privacy.dp_sgd_event(noise_multiplier=1.1, sampling_rate=0.01, steps=100)
    assert ledger.event() == expected_event
    # Bit-identical, not merely close: the same compositions in the same order.
    assert ledger.epsilon() == privacy.epsilon_for(expected_event, delta=DELTA, accountant=accountant)
    assert ledger.rounds_recorded == 50 and ledger.steps_recorded == 100


def test_cross_silo_ledger_matches_the_pinned_reference():
    # reference README, row "cross-silo": sigma 2, q 1, 100 rounds -> RDP 35.0818.
    ledger = privacy.PrivacyLedger(unit="client", delta=DELTA)
    for _ in range(100):
        ledger.record_round(2.0, 1.0)
    assert ledger.epsilon(accountant="rdp") == pytest.approx(35.0818, abs=1e-4)


def test_varying_rounds_equal_the_hand_built_composition_rdp():
    # A decaying schedule with a third of the rounds sampled and repeated values, queried
    # after every round so the ledger's incremental state is exercised at each length.
    rounds = [(2.0 - 0.05 * (r // 2), 1.0 if r % 3 else 0.05, 1 + r % 2) for r in range(24)]
    ledger = privacy.PrivacyLedger(unit="client", delta=DELTA, accountant="rdp")
    for length, (sigma, rate, steps) in enumerate(rounds, start=1):
        ledger.record_round(sigma, rate, steps)
        if length % 6 == 0:
            expected = privacy.epsilon_for(hand_built(rounds[:length]), delta=DELTA, accountant="rdp")
            assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon() == privacy.epsilon_for(ledger.event(), delta=DELTA, accountant="rdp")


def test_varying_rounds_equal_the_hand_built_composition_pld():
    rounds = [(1.0, 0.02, 1), (1.0, 0.02, 1), (3.0, 1.0, 1), (1.5, 0.02, 2), (2.0, 1.0, 1)]
    ledger = privacy.PrivacyLedger(unit="example", delta=DELTA, accountant="pld")
    for length, (sigma, rate, steps) in enumerate(rounds, start=1):
        ledger.record_round(sigma, rate, steps)
        if length in (2, 5):
            expected = privacy.epsilon_for(hand_built(rounds[:length]), delta=DELTA, accountant="pld")
            assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("accountant, sigma, budget", [("rdp", 2.0, 10.0), ("pld", 5.0, 3.0)])
def test_would_exceed_stops_at_the_boundary_round(accountant, sigma, budget):
    ledger = privacy.PrivacyLedger(unit="client", budget_epsilon=budget, delta=DELTA, accountant=accountant)
    while not ledger.would_exceed(next_round_noise_multiplier=sigma, sampling_rate=1.0):
        ledger.record_round(sigma, 1.0)
    spent = ledger.rounds_recorded
    # The last allowed round is within budget; one more would exceed.
    assert ledger.epsilon() <= budget
    one_more = privacy.dp_sgd_event(noise_multiplier=sigma, sampling_rate=1.0, steps=spent + 1)
    assert privacy.epsilon_for(one_more, delta=DELTA, accountant=accountant) > budget
    # Same answer as the budget search.
    assert spent == privacy.affordable_rounds(noise_multiplier=sigma, sampling_rate=1.0, target_epsilon=budget,
                                              delta=DELTA, accountant=accountant)
    assert spent == {"rdp": 14, "pld": 12}[accountant]  # measured, dp-accounting 0.6.0


def test_stop_record_and_report():
    schedule = privacy.LinearDecaySchedule(start=3.0, end=1.0, rounds=40)
    ledger = privacy.PrivacyLedger(unit="client", budget_epsilon=12.0, delta=DELTA, accountant="rdp")
    stop = None
    for round_index in range(40):
        stop = ledger.stop_if_would_exceed(next_round_noise_multiplier=schedule(round_index), sampling_rate=1.0)
        if stop is not None:
            break
        ledger.record_round(schedule(round_index), 1.0)
    assert isinstance(stop, privacy.BudgetExhausted)
    assert stop.round_index == ledger.rounds_recorded == round_index
    assert stop.epsilon_spent == ledger.epsilon() <= 12.0 < stop.epsilon_next
    expected_next = privacy.epsilon_for(
        privacy.heterogeneous_event(schedule.sequence(round_index + 1), 1.0), delta=DELTA, accountant="rdp")
    assert stop.epsilon_next == pytest.approx(expected_next, rel=1e-9)
    assert "budget" in stop.reason and f"round {round_index}" in stop.reason
    assert ledger.stopped is stop
    with pytest.raises(RuntimeError, match="stopped"):
        ledger.record_round(1.0, 1.0)
    flat = ledger.as_dict()
    assert all(key.startswith("privacy.") for key in flat)
    assert flat["privacy.unit"] == "client" and flat["privacy.relation"] == "add_remove_one"
    assert flat["privacy.rounds_recorded"] == round_index and flat["privacy.steps"] == round_index
    assert flat["privacy.stopped"] is True and flat["privacy.stop_round"] == round_index
    assert flat["privacy.stop_reason"] == stop.reason
    assert flat["privacy.budget_epsilon"] == 12.0 and flat["privacy.budget_accountant"] == "rdp"
    assert flat["privacy.epsilon_rdp"] == ledger.epsilon(accountant="rdp")
    assert flat["privacy.epsilon_pld"] == ledger.epsilon(accountant="pld") < flat["privacy.epsilon_rdp"]
    assert flat["privacy.epsilon"] == flat["privacy.epsilon_pld"] and flat["privacy.accountant"] == "pld"
    assert flat["privacy.noise_multiplier_max"] == 3.0
    assert flat["privacy.noise_multiplier_min"] == schedule(round_index - 1)
    assert json.loads(json.dumps(flat)) == flat


def test_empty_ledger_and_delta_for():
    ledger = privacy.PrivacyLedger(unit="example")
    assert ledger.epsilon(DELTA) == 0.0
    assert ledger.delta_for(1.0) == 0.0
    assert ledger.event() == dp_accounting.NoOpDpEvent()
    flat = ledger.as_dict()
    assert flat["privacy.rounds_recorded"] == 0 and flat["privacy.stop_reason"] == "not_stopped"
    assert "privacy.epsilon" not in flat  # no delta known, no epsilon claimed
    for _ in range(3):
        ledger.record_round(1.5, 0.1, steps=10)
    epsilon = ledger.epsilon(DELTA, "rdp")
    assert ledger.delta_for(epsilon, "rdp") == pytest.approx(DELTA, rel=1e-6)
    # Recording a round with no noise means no privacy.
    ledger.record_round(0.0, 1.0)
    assert ledger.epsilon(DELTA) == math.inf
    assert ledger.would_exceed(next_round_noise_multiplier=5.0, sampling_rate=1.0, budget_epsilon=100.0, delta=DELTA)


def test_tiered_ledger_stops_each_tier_at_its_budget():
    budgets = {"strict": 1.0, "standard": 4.0, "relaxed": 8.0}
    sigmas = privacy.calibrate_tiers(budgets=budgets, delta=DELTA, sampling_rates=1.0, steps=10)
    assert sigmas["strict"] > sigmas["standard"] > sigmas["relaxed"]  # stricter: more noise
    tiers = privacy.TieredLedger(budgets=budgets, delta=DELTA, unit="example", accountant="rdp")
    for _ in range(10):
        assert tiers.stop_exhausted(sigmas, 1.0) == {}
        tiers.record_round(sigmas, 1.0)
    epsilons = tiers.epsilon_per_tier()
    for tier, budget in budgets.items():
        assert 0.99 * budget <= epsilons[tier] <= budget  # calibrated for exactly 10 rounds
    stops = tiers.stop_exhausted(sigmas, 1.0)
    assert set(stops) == set(budgets) and tiers.active_tiers == ()
    with pytest.raises(RuntimeError, match="stopped"):
        tiers.record_round(sigmas, 1.0)


def test_tiered_ledger_runs_on_without_the_exhausted_tier():
    tiers = privacy.TieredLedger(budgets={"strict": 2.0, "relaxed": 50.0}, delta=DELTA)
    sigmas = {"strict": 2.0, "relaxed": 2.0}
    stopped_at = None
    for round_index in range(20):
        stops = tiers.stop_exhausted({tier: sigmas[tier] for tier in tiers.active_tiers}, 1.0)
        if "strict" in stops:
            stopped_at = round_index
        tiers.record_round({tier: sigmas[tier] for tier in tiers.active_tiers}, 1.0)
    assert tiers.active_tiers == ("relaxed",)
    assert tiers["strict"].rounds_recorded == stopped_at == privacy.affordable_rounds(
        noise_multiplier=2.0, sampling_rate=1.0, target_epsilon=2.0, delta=DELTA)
    assert tiers["relaxed"].rounds_recorded == 20
    epsilons = tiers.epsilon_per_tier()
    assert epsilons["strict"] <= 2.0 < epsilons["relaxed"] <= 50.0
    # A stopped tier must not be recorded again.
    with pytest.raises(ValueError, match="noise_multipliers"):
        tiers.record_round(sigmas, 1.0)
    flat = tiers.as_dict()
    assert flat["privacy.tiers"] == "strict,relaxed"
    assert flat["privacy.tier.strict.stop_round"] == stopped_at
    assert flat["privacy.tier.relaxed.rounds_recorded"] == 20
    assert flat["privacy.tier.strict.unit"] == "example"


@pytest.mark.parametrize("make, field", [
    (lambda: privacy.PrivacyLedger(unit="patient"), "unit"),
    (lambda: privacy.PrivacyLedger(unit="example", budget_epsilon=0.0), "budget_epsilon"),
    (lambda: privacy.PrivacyLedger(unit="example", budget_epsilon=-1.0), "budget_epsilon"),
    (lambda: privacy.PrivacyLedger(unit="example", delta=1.0), "delta"),
    (lambda: privacy.PrivacyLedger(unit="example", delta=0.0), "delta"),
    (lambda: privacy.PrivacyLedger(unit="example", accountant="moments"), "accountant"),
    (lambda: privacy.TieredLedger(budgets={}, delta=DELTA), "budgets"),
    (lambda: privacy.TieredLedger(budgets={"a.b": 1.0}, delta=DELTA), "budgets"),
    (lambda: privacy.TieredLedger(budgets={"a": 0.0}, delta=DELTA), r"budgets\['a'\]"),
    (lambda: privacy.TieredLedger(budgets={"a": 1.0}, delta=1.5), "delta"),
])
def test_ledger_rejects_bad_configuration(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.parametrize("call, field", [
    (lambda ledger: ledger.record_round(-1.0, 0.5), "noise_multiplier"),
    (lambda ledger: ledger.record_round(1.0, 0.0), "sampling_rate"),
    (lambda ledger: ledger.record_round(1.0, 1.5), "sampling_rate"),
    (lambda ledger: ledger.record_round(1.0, 0.5, steps=0), "steps"),
    (lambda ledger: ledger.epsilon(), "delta"),                 # no default delta
    (lambda ledger: ledger.epsilon(delta=0.0), "delta"),
    (lambda ledger: ledger.epsilon(delta=1.0), "delta"),
    (lambda ledger: ledger.epsilon(delta=DELTA, accountant="moments"), "accountant"),
    (lambda ledger: ledger.delta_for(0.0), "epsilon"),
    (lambda ledger: ledger.would_exceed(next_round_noise_multiplier=1.0, sampling_rate=1.0, delta=DELTA),
     "budget_epsilon"),                                          # no default budget
    (lambda ledger: ledger.would_exceed(next_round_noise_multiplier=1.0, sampling_rate=1.0, delta=DELTA,
                                        budget_epsilon=-3.0), "budget_epsilon"),
    (lambda ledger: ledger.would_exceed(next_round_noise_multiplier=1.0, sampling_rate=0.0, delta=DELTA,
                                        budget_epsilon=3.0), "sampling_rate"),
])
def test_ledger_rejects_bad_calls(call, field):
    ledger = privacy.PrivacyLedger(unit="example")
    ledger.record_round(2.0, 0.5)
    with pytest.raises(ValueError, match=field):
        call(ledger)
    assert ledger.rounds_recorded == 1  # nothing recorded by a refused call
