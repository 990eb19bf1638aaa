"""Noise schedules: closed forms, composition, the budget-aware scale, and bad input.

Closed forms: Yu et al. 2019 (arXiv 1904.02200) time-based / exponential / step decay as
defined in fedpriv.privacy.schedules. Composition oracle: a hand-built ComposedDpEvent
with one Gaussian per round, and for full participation the composition of Gaussian
mechanisms (Dong, Roth, Su 2019, arXiv 1905.02383, Cor. 3.3) evaluated with the analytic
Gaussian mechanism (Balle & Wang 2018, arXiv 1805.06530, dp_accounting.get_epsilon_gaussian).
"""

import dataclasses
import doctest
import math

import dp_accounting
import pytest

from fedpriv import privacy
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import calibration
from fedpriv.privacy import schedules

DELTA = 1e-5
LINEAR = privacy.LinearDecaySchedule(start=2.0, end=0.8, rounds=100)


def hand_built(sigmas, sampling_rate):
    releases = [dp_accounting.GaussianDpEvent(s) for s in sigmas]
    if sampling_rate < 1:
        releases = [dp_accounting.PoissonSampledDpEvent(sampling_rate, r) for r in releases]
    return dp_accounting.ComposedDpEvent(releases)


def test_module_examples():
    result = doctest.testmod(schedules)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("schedule, expected", [
    (privacy.ConstantSchedule(noise_multiplier=1.1), {0: 1.1, 7: 1.1, 500: 1.1}),
    # start + (end - start) * r / (rounds - 1), then end.
    (LINEAR, {0: 2.0, 1: 2.0 - 1.2 / 99, 50: 2.0 - 1.2 * 50 / 99, 99: 0.8, 100: 0.8, 1000: 0.8}),
    (privacy.LinearDecaySchedule(start=1.0, end=3.0, rounds=5), {0: 1.0, 2: 2.0, 4: 3.0, 9: 3.0}),
    (privacy.LinearDecaySchedule(start=1.5, end=0.5, rounds=1), {0: 1.5, 3: 1.5}),
    # start * rate ** r.
    (privacy.ExponentialDecaySchedule(start=3.0, rate=0.97), {0: 3.0, 1: 2.91, 10: 3.0 * 0.97**10,
                                                               100: 3.0 * 0.97**100}),
    # start * factor ** (r // every).
    (privacy.StepSchedule(start=2.0, factor=0.5, every=10), {0: 2.0, 9: 2.0, 10: 1.0, 19: 1.0, 20: 0.5, 35: 0.25}),
])
def test_values_follow_the_closed_form(schedule, expected):
    for round_index, value in expected.items():
        assert schedule(round_index) == pytest.approx(value, rel=1e-12)
    assert schedule.sequence(3) == tuple(schedule(r) for r in range(3))


def test_make_schedule_dispatches_by_kind():
    assert privacy.make_schedule("constant", noise_multiplier=1.0) == privacy.ConstantSchedule(noise_multiplier=1.0)
    assert privacy.make_schedule("linear", start=2.0, end=0.8, rounds=100) == LINEAR
    assert privacy.make_schedule("exponential", start=2.0, rate=0.9) == privacy.ExponentialDecaySchedule(
        start=2.0, rate=0.9)
    assert privacy.make_schedule("step", start=2.0, factor=0.5, every=3) == privacy.StepSchedule(
        start=2.0, factor=0.5, every=3)
    # Configs are frozen, keyword-only and hashable (usable as static jit arguments).
    with pytest.raises(dataclasses.FrozenInstanceError):
        LINEAR.start = 3.0
    with pytest.raises(TypeError):
        privacy.LinearDecaySchedule(2.0, 0.8, 100)  # noqa: positional use must fail
    assert hash(LINEAR) == hash(privacy.LinearDecaySchedule(start=2.0, end=0.8, rounds=100))


@pytest.mark.parametrize("schedule", [
    privacy.ConstantSchedule(noise_multiplier=1.5),
    privacy.LinearDecaySchedule(start=3.0, end=1.0, rounds=30),
    privacy.ExponentialDecaySchedule(start=3.0, rate=0.95),
    privacy.StepSchedule(start=3.0, factor=0.7, every=7),
])
def test_schedule_composes_like_its_hand_built_sequence(schedule):
    sigmas = schedule.sequence(30)
    for sampling_rate, rounds in ((1.0, 30), (0.02, 8)):  # sampled RDP costs ~30 ms per distinct round
        event = privacy.schedule_event(schedule, rounds=rounds, sampling_rate=sampling_rate)
        assert privacy.epsilon_for(event, delta=DELTA, accountant="rdp") == pytest.approx(
            privacy.epsilon_for(hand_built(sigmas[:rounds], sampling_rate), delta=DELTA, accountant="rdp"),
            rel=1e-9)
    # Full participation: one Gaussian with sigma_eff = (sum 1/sigma^2)^(-1/2), exactly.
    pld = privacy.epsilon_for(privacy.schedule_event(schedule, rounds=30, sampling_rate=1.0), delta=DELTA,
                              accountant="pld")
    sigma_eff = math.fsum(1 / s**2 for s in sigmas) ** -0.5
    assert pld == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma_eff, DELTA), abs=1e-6)


def test_step_schedule_pld_matches_hand_built_with_sampling():
    # 2 distinct values over 4 rounds: the hand-built per-round event and the grouped one
    # are accounted identically (both to 1e-9).
    schedule = privacy.StepSchedule(start=1.2, factor=0.8, every=2)
    event = privacy.schedule_event(schedule, rounds=4, sampling_rate=0.01)
    hand = hand_built(schedule.sequence(4), 0.01)
    assert privacy.epsilon_for(event, delta=DELTA, accountant="pld") == pytest.approx(
        privacy.epsilon_for(hand, delta=DELTA, accountant="pld"), rel=1e-9)


def test_linear_decay_cross_silo_numbers():
    # sigma 2 -> 0.8 over 100 rounds, every hospital every round (q = 1), delta 1e-5.
    sigmas = LINEAR.sequence(100)
    event = privacy.schedule_event(LINEAR, rounds=100, sampling_rate=1.0)
    rdp = privacy.epsilon_for(event, delta=DELTA, accountant="rdp")
    pld = privacy.epsilon_for(event, delta=DELTA, accountant="pld")
    # RDP: dp-accounting's own RdpAccountant on the ungrouped per-round event.
    raw_rdp = accountant_lib.make_accountant("rdp").compose(hand_built(sigmas, 1.0)).get_epsilon(DELTA)
    assert rdp == pytest.approx(raw_rdp, rel=1e-9)
    # PLD: the analytic Gaussian with sigma_eff.
    sigma_eff = math.fsum(1 / s**2 for s in sigmas) ** -0.5
    assert pld == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma_eff, DELTA), abs=1e-6)
    assert (round(rdp, 3), round(pld, 3)) == (67.652, 64.388)  # measured, dp-accounting 0.6.0
    # Decaying from 2 costs more than constant 2 (35.0818, reference README) but less than constant 0.8.
    assert 35.0818 < rdp < privacy.epsilon_for(privacy.dp_sgd_event(noise_multiplier=0.8, sampling_rate=1.0,
                                                                    steps=100), delta=DELTA, accountant="rdp")


# PLD takes 13 s here: the RDP case stays in the default run.
@pytest.mark.parametrize("accountant", ["rdp", pytest.param("pld", marks=pytest.mark.slow)])
def test_budget_aware_linear_spends_the_budget(accountant):
    schedule = privacy.make_schedule("budget_aware", target_epsilon=8.0, delta=DELTA, rounds=100,
                                     sampling_rate=1.0, accountant=accountant,
                                     profile={"kind": "linear", "start": 2.0, "end": 0.8, "rounds": 100})
    epsilon = privacy.epsilon_for(privacy.schedule_event(schedule, rounds=100, sampling_rate=1.0), delta=DELTA,
                                  accountant=accountant)
    assert 0.99 * 8.0 <= epsilon <= 8.0
    assert epsilon == schedule.epsilon
    # The shape is the profile's: same ratios, the peak is the scale.
    assert schedule(0) == schedule.scale
    for r in (1, 50, 99):
        assert schedule(r) / schedule(0) == pytest.approx(LINEAR(r) / LINEAR(0), rel=1e-12)
    # Minimal: 1 % less noise everywhere overspends.
    quieter = [0.99 * s for s in schedule.sequence(100)]
    assert privacy.epsilon_for(privacy.heterogeneous_event(quieter, 1.0), delta=DELTA,
                               accountant=accountant) > 8.0
    # The budget covers the planned rounds only.
    with pytest.raises(ValueError, match="round_index"):
        schedule(100)


def test_budget_aware_constant_equals_calibration():
    for sampling_rate, rounds in ((1.0, 100), (0.05, 40)):
        schedule = privacy.BudgetAwareSchedule(target_epsilon=3.0, delta=DELTA, rounds=rounds,
                                               sampling_rate=sampling_rate, steps_per_round=2)
        sigma = privacy.calibrate_noise_multiplier(target_epsilon=3.0, delta=DELTA, sampling_rate=sampling_rate,
                                                   steps=2 * rounds)
        assert schedule(0) == pytest.approx(sigma, rel=0.01)
        assert set(schedule.sequence(rounds)) == {schedule.scale}


def test_budget_aware_step_profile_with_sampling():
    schedule = privacy.BudgetAwareSchedule(target_epsilon=2.0, delta=DELTA, rounds=10, sampling_rate=0.05,
                                           profile=privacy.StepSchedule(start=1.0, factor=0.5, every=5))
    sigmas = schedule.sequence(10)
    assert sigmas[:5] == (schedule.scale,) * 5 and sigmas[5:] == (schedule.scale / 2,) * 5
    epsilon = privacy.epsilon_for(hand_built(sigmas, 0.05), delta=DELTA, accountant="rdp")
    assert 0.99 * 2.0 <= epsilon <= 2.0


@pytest.mark.parametrize("kind, options, field", [
    ("linear", dict(start=2.0, end=-0.5, rounds=10), "end"),   # a line that goes negative
    ("linear", dict(start=2.0, end=0.0, rounds=10), "end"),    # ... or reaches zero
    ("linear", dict(start=-1.0, end=0.5, rounds=10), "start"),
    ("linear", dict(start=2.0, end=0.5, rounds=0), "rounds"),
    ("exponential", dict(start=2.0, rate=-0.9), "rate"),       # alternating sign
    ("exponential", dict(start=2.0, rate=0.0), "rate"),
    ("exponential", dict(start=float("nan"), rate=0.9), "start"),
    ("step", dict(start=2.0, factor=0.0, every=5), "factor"),
    ("step", dict(start=2.0, factor=0.5, every=0), "every"),
    ("constant", dict(noise_multiplier=0.0), "noise_multiplier"),
    ("constant", dict(noise_multiplier=True), "noise_multiplier"),
    ("constant", dict(noise_multiplier=1.0, slope=2.0), "slope"),   # unknown option
    ("linear", dict(start=2.0, end=0.5), "rounds"),                 # missing option
    ("cosine", dict(start=2.0), "kind"),                            # unknown kind
    ("budget_aware", dict(target_epsilon=0.0, delta=DELTA, rounds=10, sampling_rate=1.0), "target_epsilon"),
    ("budget_aware", dict(target_epsilon=1.0, delta=1.0, rounds=10, sampling_rate=1.0), "delta"),
    ("budget_aware", dict(target_epsilon=1.0, delta=0.0, rounds=10, sampling_rate=1.0), "delta"),
    ("budget_aware", dict(target_epsilon=1.0, delta=DELTA, rounds=10, sampling_rate=0.0), "sampling_rate"),
    ("budget_aware", dict(target_epsilon=1.0, delta=DELTA, rounds=10, sampling_rate=1.5), "sampling_rate"),
    ("budget_aware", dict(target_epsilon=1.0, delta=DELTA, rounds=0, sampling_rate=1.0), "rounds"),
    ("budget_aware", dict(target_epsilon=1.0, delta=DELTA, rounds=10, sampling_rate=1.0, accountant="moments"),
     "accountant"),
    ("budget_aware", dict(target_epsilon=1.0, delta=DELTA, rounds=10, sampling_rate=1.0,
                          profile={"kind": "cosine"}), "profile"),
    ("budget_aware", dict(target_epsilon=1.0, delta=DELTA, rounds=10, sampling_rate=1.0,
                          profile={"kind": "linear", "start": 1.0, "end": -1.0, "rounds": 10}), "end"),
])
def test_bad_schedules_are_refused_before_any_accounting(kind, options, field, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("accounting ran before the arguments were validated")

    monkeypatch.setattr(calibration, "_calibrate", forbidden)
    monkeypatch.setattr(accountant_lib, "make_accountant", forbidden)
    with pytest.raises(ValueError, match=field):
        privacy.make_schedule(kind, **options)


def test_bad_rounds_and_round_indices():
    with pytest.raises(ValueError, match="rounds"):
        LINEAR.sequence(0)  # an empty sequence has no privacy statement
    with pytest.raises(ValueError, match="round_index"):
        LINEAR(-1)
    with pytest.raises(ValueError, match="round_index"):
        LINEAR(2.0)
    # An exponential decay that underflows to 0 is refused at the round where it happens.
    tiny = privacy.ExponentialDecaySchedule(start=1.0, rate=1e-10)
    assert tiny(30) == pytest.approx(1e-300)
    with pytest.raises(ValueError, match="round_index=33"):  # 1e-330 underflows to 0.0
        tiny.sequence(41)
    with pytest.raises(ValueError, match="schedule"):
        privacy.schedule_event(lambda r: 1.0, rounds=3, sampling_rate=1.0)
