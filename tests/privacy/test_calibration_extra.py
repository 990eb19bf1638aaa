"""Calibration beyond one noise multiplier: rounds a budget affords, and per-tier noise.

Oracles: epsilon_for on dp_sgd_event (dp-accounting 0.6.0) at R and R + 1 rounds; the
cross-silo pinned value (reference README: sigma 2, q 1, 100 rounds -> RDP 35.0818); the
analytic Gaussian mechanism (Balle & Wang 2018, arXiv 1805.06530) for full participation.
"""

import math

import dp_accounting
import pytest

from fedpriv import privacy
from fedpriv.privacy import accountant as accountant_lib

DELTA = 1e-5


def epsilon_after(rounds, *, noise_multiplier, sampling_rate, steps_per_round=1, accountant):
    event = privacy.dp_sgd_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate,
                                 steps=rounds * steps_per_round)
    return privacy.epsilon_for(event, delta=DELTA, accountant=accountant)


@pytest.mark.parametrize("setting", [
    dict(noise_multiplier=1.0, sampling_rate=0.01, steps_per_round=5, target_epsilon=2.0, accountant="rdp"),
    dict(noise_multiplier=1.1, sampling_rate=256 / 60000, steps_per_round=1, target_epsilon=1.0, accountant="rdp"),
    dict(noise_multiplier=3.0, sampling_rate=1.0, steps_per_round=1, target_epsilon=5.0, accountant="pld"),
])
def test_affordable_rounds_is_the_last_round_within_budget(setting):
    rounds = privacy.affordable_rounds(**setting, delta=DELTA)
    target = setting.pop("target_epsilon")
    assert rounds >= 1
    assert epsilon_after(rounds, **setting) <= target < epsilon_after(rounds + 1, **setting)


def test_affordable_rounds_pinned_and_analytic():
    # reference README: sigma 2, q 1, 100 rounds -> RDP 35.0818 (35.08175 unrounded).
    assert privacy.affordable_rounds(noise_multiplier=2.0, sampling_rate=1.0, target_epsilon=35.0818,
                                     delta=DELTA) == 100
    assert privacy.affordable_rounds(noise_multiplier=2.0, sampling_rate=1.0, target_epsilon=35.08,
                                     delta=DELTA) == 99
    # Full participation under PLD: R rounds are one Gaussian with sigma / sqrt(R), so R is
    # the largest integer with get_epsilon_gaussian(sigma / sqrt(R)) <= target.
    rounds = privacy.affordable_rounds(noise_multiplier=4.0, sampling_rate=1.0, target_epsilon=4.0, delta=DELTA,
                                       accountant="pld")
    analytic = [dp_accounting.get_epsilon_gaussian(4.0 / math.sqrt(r), DELTA) for r in (rounds, rounds + 1)]
    assert analytic[0] <= 4.0 < analytic[1]
    # PLD is tighter, so it affords at least as many rounds as RDP.
    assert rounds >= privacy.affordable_rounds(noise_multiplier=4.0, sampling_rate=1.0, target_epsilon=4.0,
                                               delta=DELTA, accountant="rdp")


@pytest.mark.slow  # 12 s; the last-round and pinned/analytic tests above stay in the default run
def test_affordable_rounds_is_monotone():
    base = dict(sampling_rate=0.02, delta=DELTA)
    by_budget = [privacy.affordable_rounds(noise_multiplier=1.0, target_epsilon=e, **base) for e in (2, 3, 4, 6)]
    by_noise = [privacy.affordable_rounds(noise_multiplier=s, target_epsilon=2.0, **base) for s in (0.8, 1, 1.5, 3)]
    assert by_budget == sorted(by_budget) and len(set(by_budget)) == 4
    assert by_noise == sorted(by_noise) and len(set(by_noise)) == 4


def test_affordable_rounds_edges():
    # No noise: not a single round fits. One round already over budget: 0.
    assert privacy.affordable_rounds(noise_multiplier=0.0, sampling_rate=1.0, target_epsilon=100.0, delta=DELTA) == 0
    assert privacy.affordable_rounds(noise_multiplier=1.0, sampling_rate=1.0, target_epsilon=1.0, delta=DELTA) == 0
    # The cap is returned when it fits (a lower bound on what the budget affords).
    assert privacy.affordable_rounds(noise_multiplier=50.0, sampling_rate=1.0, target_epsilon=5.0, delta=DELTA,
                                     max_rounds=40) == 40


@pytest.mark.parametrize("accountant, budgets", [
    ("rdp", {"sensitive": 1.0, "standard": 3.0, "research_consent": 8.0}),
    ("pld", {"sensitive": 1.0, "research_consent": 3.0}),  # PLD probes cost ~0.3 s each
])
def test_calibrate_tiers_meets_each_budget_and_orders_the_noise(accountant, budgets):
    sigmas = privacy.calibrate_tiers(budgets=budgets, delta=DELTA, sampling_rates=1.0, steps=20,
                                     accountant=accountant)
    assert list(sigmas) == list(budgets)
    # Stricter budget -> larger noise multiplier: never less protection.
    ordered = [sigmas[tier] for tier in budgets]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == len(ordered)
    events = privacy.tier_events(noise_multipliers=sigmas, sampling_rates=1.0, steps=20)
    for tier, budget in budgets.items():
        epsilon = privacy.epsilon_for(events[tier], delta=DELTA, accountant=accountant)
        assert 0.99 * budget <= epsilon <= budget
        # Each tier matches single-budget calibration.
        if accountant == "rdp":
            assert sigmas[tier] == privacy.calibrate_noise_multiplier(target_epsilon=budget, delta=DELTA,
                                                                      sampling_rate=1.0, steps=20, accountant="rdp")


def test_calibrate_tiers_with_own_sampling_rates():
    budgets = {"strict": 1.0, "loose": 4.0}
    rates = {"strict": 0.01, "loose": 0.05}
    sigmas = privacy.calibrate_tiers(budgets=budgets, delta=DELTA, sampling_rates=rates,
                                     steps={"strict": 500, "loose": 200})
    for tier in budgets:
        event = privacy.dp_sgd_event(noise_multiplier=sigmas[tier], sampling_rate=rates[tier],
                                     steps={"strict": 500, "loose": 200}[tier])
        assert 0.99 * budgets[tier] <= privacy.epsilon_for(event, delta=DELTA, accountant="rdp") <= budgets[tier]


def test_equal_budgets_get_equal_noise():
    sigmas = privacy.calibrate_tiers(budgets={"a": 2.0, "b": 2.0, "c": 2.0 * (1 + 1e-9)}, delta=DELTA,
                                     sampling_rates=0.1, steps=50)
    assert sigmas["a"] == sigmas["b"] >= sigmas["c"]


@pytest.mark.parametrize("kwargs, field", [
    (dict(budgets={}), "budgets"),
    (dict(budgets={"a": 0.0}), r"budgets\['a'\]"),
    (dict(budgets={"a": -1.0}), r"budgets\['a'\]"),
    (dict(delta=1.0), "delta"),
    (dict(delta=0.0), "delta"),
    (dict(sampling_rates={"b": 0.1}), "sampling_rates"),
    (dict(sampling_rates={"a": 0.0}), r"sampling_rates\['a'\]"),
    (dict(sampling_rates=1.2), r"sampling_rates\['a'\]"),
    (dict(steps=0), r"steps\['a'\]"),
    (dict(accountant="moments"), "accountant"),
])
def test_calibrate_tiers_rejects_bad_input(kwargs, field, monkeypatch):
    monkeypatch.setattr(accountant_lib, "make_accountant", lambda *a: pytest.fail("accounting before validation"))
    good = dict(budgets={"a": 1.0}, delta=DELTA, sampling_rates=0.1, steps=10)
    with pytest.raises(ValueError, match=field):
        privacy.calibrate_tiers(**{**good, **kwargs})


@pytest.mark.parametrize("kwargs, field", [
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(sampling_rate=1.5), "sampling_rate"),
    (dict(steps_per_round=0), "steps_per_round"),
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(delta=0.0), "delta"),
    (dict(delta=1.0), "delta"),
    (dict(accountant="moments"), "accountant"),
    (dict(max_rounds=0), "max_rounds"),
])
def test_affordable_rounds_rejects_bad_input(kwargs, field, monkeypatch):
    monkeypatch.setattr(accountant_lib, "make_accountant", lambda *a: pytest.fail("accounting before validation"))
    good = dict(noise_multiplier=1.0, sampling_rate=0.1, target_epsilon=1.0, delta=DELTA)
    with pytest.raises(ValueError, match=field):
        privacy.affordable_rounds(**{**good, **kwargs})
