"""Event builders beyond DP-SGD: DP-FedAvg, per-round noise multipliers, privacy tiers.

Oracles: dp-accounting 0.6.0 itself (raw accountants on hand-built events, no fedpriv
rewriting), the analytic Gaussian mechanism (Balle & Wang 2018, arXiv 1805.06530,
``dp_accounting.get_epsilon_gaussian``), and the composition of Gaussian mechanisms
(Dong, Roth, Su 2019, arXiv 1905.02383, Cor. 3.3: releases with sigma_i compose to one
Gaussian with sigma_eff = (sum 1 / sigma_i^2)^(-1/2)). Pinned numbers:
/work/shared/reference/README.md, "Privacy accounting".
"""

import math

import dp_accounting
import pytest

from fedpriv import privacy
from fedpriv.privacy import accountant as accountant_lib

DELTA = 1e-5


def gaussian(sigma, sampling_rate=1.0):
    release = dp_accounting.GaussianDpEvent(sigma)
    return release if sampling_rate == 1.0 else dp_accounting.PoissonSampledDpEvent(sampling_rate, release)


def per_round(sigmas, sampling_rates):
    """The hand-built event: one event per round, nothing grouped."""
    return dp_accounting.ComposedDpEvent([gaussian(s, q) for s, q in zip(sigmas, sampling_rates)])


def raw_epsilon(event, accountant):
    """dp-accounting alone, without fedpriv's accounting form."""
    return accountant_lib.make_accountant(accountant).compose(event).get_epsilon(DELTA)


def sigma_eff(sigmas):
    return math.fsum(1 / s**2 for s in sigmas) ** -0.5


# -- DP-FedAvg ---------------------------------------------------------------------------

def test_dp_fedavg_event_is_the_client_level_sampled_gaussian():
    full = privacy.dp_fedavg_event(noise_multiplier=2.0, client_sampling_rate=1.0, rounds=100)
    assert full == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 100)  # q=1: no wrapper
    sampled = privacy.dp_fedavg_event(noise_multiplier=1.3, client_sampling_rate=0.2, rounds=50)
    assert sampled == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.3)), 50)


def test_cross_silo_dp_fedavg_is_the_analytic_gaussian():
    # reference README: 10 hospitals, all every round, sigma 2, 100 rounds -> RDP 35.0818,
    # PLD 33.1037; exactly one Gaussian with sigma 2/sqrt(100) = 0.2.
    event = privacy.dp_fedavg_event(noise_multiplier=2.0, client_sampling_rate=1.0, rounds=100)
    pld = privacy.epsilon_for(event, delta=DELTA, accountant="pld")
    assert pld == pytest.approx(dp_accounting.get_epsilon_gaussian(2.0 / math.sqrt(100), DELTA), abs=1e-6)
    assert pld == pytest.approx(33.1037, abs=1e-4)
    assert privacy.epsilon_for(event, delta=DELTA, accountant="rdp") == pytest.approx(35.0818, abs=1e-4)


# -- heterogeneous rounds ----------------------------------------------------------------

def test_heterogeneous_event_groups_equal_consecutive_rounds():
    event = privacy.heterogeneous_event([2.0, 2.0, 1.5, 1.5, 1.5, 2.0], 0.1, steps_per_round=3)
    assert event == dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(gaussian(2.0, 0.1), 6),
        dp_accounting.SelfComposedDpEvent(gaussian(1.5, 0.1), 9),
        dp_accounting.SelfComposedDpEvent(gaussian(2.0, 0.1), 3),
    ])
    # A single run is exactly the DP-SGD event.
    assert privacy.heterogeneous_event([1.1] * 7, 0.01, steps_per_round=2) == privacy.dp_sgd_event(
        noise_multiplier=1.1, sampling_rate=0.01, steps=14)
    # Per-round sampling rates split runs too; q = 1 drops the wrapper.
    mixed = privacy.heterogeneous_event([1.0, 1.0, 1.0], [0.5, 1.0, 1.0])
    assert mixed == dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(gaussian(1.0, 0.5), 1),
        dp_accounting.SelfComposedDpEvent(gaussian(1.0), 2),
    ])


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("sigmas, sampling_rate", [
    ([3.0 - 0.1 * r for r in range(20)], 1.0),         # full participation, all distinct
    ([1.0, 1.0, 1.5, 1.5, 1.5, 2.0], 0.01),            # sampled, with repeats
])
def test_heterogeneous_equals_hand_built_composition(sigmas, sampling_rate, accountant):
    built = privacy.heterogeneous_event(sigmas, sampling_rate)
    hand = per_round(sigmas, [sampling_rate] * len(sigmas))
    epsilon = privacy.epsilon_for(built, delta=DELTA, accountant=accountant)
    assert epsilon == pytest.approx(privacy.epsilon_for(hand, delta=DELTA, accountant=accountant), rel=1e-9)
    assert 0 < epsilon < math.inf


def test_accounting_form_agrees_with_raw_dp_accounting_rdp():
    # RDP adds alpha / (2 sigma^2) per Gaussian (Mironov 2017, arXiv 1702.07476, Prop. 7), so
    # merging the q = 1 rounds is exact: raw dp-accounting on the ungrouped event agrees to 1e-9.
    sigmas = [2.0 - 0.012 * r for r in range(100)]
    rates = [1.0 if r % 3 else 0.05 for r in range(100)]  # a third of the rounds sampled
    for event in (per_round(sigmas, [1.0] * 100), per_round(sigmas[:12], rates[:12])):
        assert privacy.epsilon_for(event, delta=DELTA, accountant="rdp") == pytest.approx(
            raw_epsilon(event, "rdp"), rel=1e-9)


def test_accounting_form_is_the_exact_gaussian_composition_under_pld():
    # Five full-participation rounds = one Gaussian with sigma_eff (Dong, Roth, Su 2019,
    # Cor. 3.3). Raw dp-accounting convolves five discretised PLDs instead: also an upper
    # bound, pessimistic by its grid, so it may only be a hair larger.
    sigmas = [3.0, 2.5, 2.0, 1.5, 1.0]
    event = privacy.heterogeneous_event(sigmas, 1.0)
    pld = privacy.epsilon_for(event, delta=DELTA, accountant="pld")
    assert pld == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma_eff(sigmas), DELTA), abs=1e-6)
    raw = raw_epsilon(per_round(sigmas, [1.0] * 5), "pld")
    assert pld <= raw + 1e-9
    assert raw == pytest.approx(pld, rel=1e-4)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_delta_for_inverts_epsilon_for_on_new_events(accountant):
    events = [
        privacy.dp_fedavg_event(noise_multiplier=3.0, client_sampling_rate=1.0, rounds=10),
        privacy.heterogeneous_event([4.0, 3.0, 2.0], [1.0, 0.5, 1.0]),
        privacy.tier_events(noise_multipliers={"strict": 5.0}, sampling_rates=0.5, steps=4)["strict"],
    ]
    for event in events:
        epsilon = privacy.epsilon_for(event, delta=DELTA, accountant=accountant)
        assert privacy.delta_for(event, epsilon=epsilon, accountant=accountant) == pytest.approx(DELTA, rel=1e-5)
        assert privacy.delta_for(event, epsilon=1.5 * epsilon, accountant=accountant) < 0.5 * DELTA


def test_a_round_without_noise_means_no_privacy():
    event = privacy.heterogeneous_event([2.0, 0.0, 3.0], 1.0)
    assert privacy.epsilon_for(event, delta=DELTA, accountant="rdp") == math.inf
    assert privacy.epsilon_for(event, delta=DELTA, accountant="pld") == math.inf


# -- tiers -------------------------------------------------------------------------------

def test_tier_events_are_one_dp_sgd_event_per_tier():
    events = privacy.tier_events(noise_multipliers={"strict": 3.0, "standard": 1.0},
                                 sampling_rates={"strict": 0.01, "standard": 0.02}, steps=100)
    assert list(events) == ["strict", "standard"]
    assert events["strict"] == privacy.dp_sgd_event(noise_multiplier=3.0, sampling_rate=0.01, steps=100)
    assert events["standard"] == privacy.dp_sgd_event(noise_multiplier=1.0, sampling_rate=0.02, steps=100)
    strict, standard = (privacy.epsilon_for(events[t], delta=DELTA, accountant="rdp") for t in events)
    assert strict < standard


# -- reports say which accountant --------------------------------------------------------

def test_report_states_unit_relation_and_accountant():
    report = privacy.sampled_gaussian_report(noise_multiplier=4.0, sampling_rate=1.0, steps=4, delta=DELTA,
                                             unit="client")
    flat = report.as_dict()
    assert (flat["privacy.unit"], flat["privacy.relation"], flat["privacy.accountant"]) == (
        "client", "add_remove_one", "pld")
    assert flat["privacy.epsilon"] == report.epsilon_pld < report.epsilon_rdp
    looser_pld = privacy.PrivacyReport(unit="example", delta=DELTA, epsilon_rdp=1.0, epsilon_pld=1.2,
                                       noise_multiplier=1.0, sampling_rate=0.1, steps=10)
    assert looser_pld.accountant == "rdp" and looser_pld.as_dict()["privacy.epsilon"] == 1.0


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("call, field", [
    (lambda: privacy.heterogeneous_event([], 0.5), "noise_multipliers"),
    (lambda: privacy.heterogeneous_event(2.0, 0.5), "noise_multipliers"),
    (lambda: privacy.heterogeneous_event([1.0, 2.0, -1.0], 0.5), r"noise_multipliers\[2\]"),
    (lambda: privacy.heterogeneous_event([1.0], 0.0), "sampling_rate"),
    (lambda: privacy.heterogeneous_event([1.0], 1.5), "sampling_rate"),
    (lambda: privacy.heterogeneous_event([1.0, 1.0], [0.5]), "sampling_rate"),
    (lambda: privacy.heterogeneous_event([1.0, 1.0], [0.5, 0.0]), r"sampling_rate\[1\]"),
    (lambda: privacy.heterogeneous_event([1.0], 0.5, steps_per_round=0), "steps_per_round"),
    (lambda: privacy.dp_fedavg_event(noise_multiplier=1.0, client_sampling_rate=0.0, rounds=5),
     "client_sampling_rate"),
    (lambda: privacy.dp_fedavg_event(noise_multiplier=1.0, client_sampling_rate=1.01, rounds=5),
     "client_sampling_rate"),
    (lambda: privacy.dp_fedavg_event(noise_multiplier=1.0, client_sampling_rate=1.0, rounds=0), "rounds"),
    (lambda: privacy.dp_fedavg_event(noise_multiplier=-1.0, client_sampling_rate=1.0, rounds=5),
     "noise_multiplier"),
    (lambda: privacy.tier_events(noise_multipliers={}, sampling_rates=0.1, steps=1), "noise_multipliers"),
    (lambda: privacy.tier_events(noise_multipliers={"a": 1.0}, sampling_rates={"b": 0.1}, steps=1),
     "sampling_rates"),
    (lambda: privacy.tier_events(noise_multipliers={"a": 1.0}, sampling_rates=0.0, steps=1),
     r"sampling_rates\['a'\]"),
    (lambda: privacy.tier_events(noise_multipliers={"a": 1.0}, sampling_rates=0.1, steps={"a": 0}),
     r"steps\['a'\]"),
])
def test_builders_reject_bad_input(call, field):
    with pytest.raises(ValueError, match=field):
        call()


@pytest.mark.parametrize("delta", [0.0, -1e-5, 1.0, 2.0])
def test_accounting_new_events_rejects_bad_delta(delta):
    event = privacy.heterogeneous_event([2.0, 1.0], 1.0)
    with pytest.raises(ValueError, match=r"delta must be .*\(0, 1\)"):
        privacy.epsilon_for(event, delta=delta, accountant="pld")


@pytest.mark.parametrize("epsilon", [0.0, -2.0])
def test_accounting_new_events_rejects_bad_epsilon(epsilon):
    event = privacy.dp_fedavg_event(noise_multiplier=2.0, client_sampling_rate=0.5, rounds=3)
    with pytest.raises(ValueError, match=r"epsilon must be .*> 0"):
        privacy.delta_for(event, epsilon=epsilon, accountant="rdp")
