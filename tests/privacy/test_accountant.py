"""Accountant oracles: pinned dp-accounting 0.6.0 numbers and analytic Gaussian epsilons.

Pinned values: /work/shared/reference/README.md, "Privacy accounting (dp-accounting 0.6.0,
add/remove-one, Poisson sampling, delta = 1e-5)".
"""

import dataclasses
import json
import math

import dp_accounting
import pytest

from fedpriv import privacy
from fedpriv.privacy import accountant as accountant_lib

DELTA = 1e-5
# Abadi et al. 2016 (arXiv 1607.00133) MNIST setup: lot 256 of 60000, sigma 1.1, 60 epochs.
MNIST = dict(noise_multiplier=1.1, sampling_rate=256 / 60000, steps=14062)
# Cross-silo: 10 hospitals, all every round, sigma 2, 100 rounds.
CROSS_SILO = dict(noise_multiplier=2.0, sampling_rate=1.0, steps=100)


@pytest.fixture(scope="module")
def cross_silo_pld():
    # The slowest accounting here (~1 s); shared by the tests that need it.
    return privacy.epsilon_for(privacy.dp_sgd_event(**CROSS_SILO), delta=DELTA, accountant="pld")


@pytest.mark.parametrize("setting, accountant, expected", [
    # reference README table, row "MNIST DP-SGD".
    (MNIST, "rdp", 2.5966),
    (MNIST, "pld", 2.3817),
    # reference README table, row "cross-silo".
    (CROSS_SILO, "rdp", 35.0818),
])
def test_epsilon_matches_pinned_reference(setting, accountant, expected):
    epsilon = privacy.epsilon_for(privacy.dp_sgd_event(**setting), delta=DELTA, accountant=accountant)
    assert epsilon == pytest.approx(expected, abs=1e-3)


def test_cross_silo_pld_matches_pinned_reference(cross_silo_pld):
    # reference README table, row "cross-silo", PLD column.
    assert cross_silo_pld == pytest.approx(33.1037, abs=1e-3)


def test_full_participation_pld_is_the_analytic_gaussian(cross_silo_pld):
    # 100 Gaussian releases with sigma 2 are one Gaussian with sigma 2/sqrt(100) = 0.2, whose
    # exact epsilon is the analytic Gaussian mechanism (Balle & Wang 2018, arXiv 1805.06530),
    # dp_accounting.get_epsilon_gaussian(0.2, 1e-5) = 33.103732 (reference README). Measured
    # agreement of the PLD accountant (interval 1e-4): 1.4e-9; we assert 1e-6.
    analytic = dp_accounting.get_epsilon_gaussian(2.0 / math.sqrt(100), DELTA)
    assert analytic == pytest.approx(33.103732, abs=1e-6)
    assert cross_silo_pld == pytest.approx(analytic, abs=1e-6)


@pytest.mark.parametrize("noise_multiplier, steps", [(1.0, 1), (3.0, 25)])
def test_full_participation_pld_is_analytic_for_other_settings(noise_multiplier, steps):
    event = privacy.dp_sgd_event(noise_multiplier=noise_multiplier, sampling_rate=1.0, steps=steps)
    analytic = dp_accounting.get_epsilon_gaussian(noise_multiplier / math.sqrt(steps), DELTA)
    assert privacy.epsilon_for(event, delta=DELTA, accountant="pld") == pytest.approx(analytic, abs=1e-6)


def test_one_gaussian_release():
    # reference README: "One Gaussian release, sigma 1, delta 1e-5: analytic/PLD 4.37718, RDP 4.72851".
    event = privacy.dp_sgd_event(noise_multiplier=1.0, sampling_rate=1.0, steps=1)
    assert privacy.epsilon_for(event, delta=DELTA, accountant="pld") == pytest.approx(4.37718, abs=1e-5)
    assert privacy.epsilon_for(event, delta=DELTA, accountant="rdp") == pytest.approx(4.72851, abs=1e-5)


@pytest.mark.parametrize("setting", [
    MNIST,
    dict(noise_multiplier=0.8, sampling_rate=0.05, steps=300),
    dict(noise_multiplier=5.0, sampling_rate=0.5, steps=20),
    dict(noise_multiplier=1.0, sampling_rate=1.0, steps=1),
])
def test_pld_is_tighter_than_rdp(setting):
    # reference README: "PLD <= RDP always holds"; and both are real (non-trivial) bounds.
    event = privacy.dp_sgd_event(**setting)
    pld = privacy.epsilon_for(event, delta=DELTA, accountant="pld")
    rdp = privacy.epsilon_for(event, delta=DELTA, accountant="rdp")
    assert 0 < pld <= rdp < math.inf
    assert pld < 0.99 * rdp


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("setting", [MNIST, dict(noise_multiplier=0.8, sampling_rate=0.05, steps=300)])
def test_delta_for_inverts_epsilon_for(setting, accountant):
    event = privacy.dp_sgd_event(**setting)
    epsilon = privacy.epsilon_for(event, delta=DELTA, accountant=accountant)
    assert privacy.delta_for(event, epsilon=epsilon, accountant=accountant) == pytest.approx(DELTA, rel=1e-6)
    # More epsilon, less delta: the round trip is not a constant function.
    assert privacy.delta_for(event, epsilon=1.5 * epsilon, accountant=accountant) < 0.5 * DELTA


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_no_noise_means_no_privacy(accountant):
    event = privacy.dp_sgd_event(noise_multiplier=0.0, sampling_rate=0.1, steps=10)
    assert privacy.epsilon_for(event, delta=DELTA, accountant=accountant) == math.inf


def test_event_structure():
    sampled = privacy.dp_sgd_event(**MNIST)
    assert sampled == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(256 / 60000, dp_accounting.GaussianDpEvent(1.1)), 14062)
    # q == 1: no sampling wrapper.
    full = privacy.dp_sgd_event(**CROSS_SILO)
    assert full == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 100)


@pytest.mark.parametrize("kwargs, field", [
    (dict(noise_multiplier=-0.1, sampling_rate=0.5, steps=10), "noise_multiplier"),
    (dict(noise_multiplier=float("nan"), sampling_rate=0.5, steps=10), "noise_multiplier"),
    (dict(noise_multiplier=1.0, sampling_rate=0.0, steps=10), "sampling_rate"),
    (dict(noise_multiplier=1.0, sampling_rate=1.5, steps=10), "sampling_rate"),
    (dict(noise_multiplier=1.0, sampling_rate=-0.5, steps=10), "sampling_rate"),
    (dict(noise_multiplier=1.0, sampling_rate=0.5, steps=0), "steps"),
    (dict(noise_multiplier=1.0, sampling_rate=0.5, steps=2.5), "steps"),
])
def test_event_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field) as error:
        privacy.dp_sgd_event(**kwargs)
    assert "got" in str(error.value)


@pytest.fixture
def no_compute(monkeypatch):
    """Makes any accounting fail, to prove validation happens before compute."""
    def forbidden(*args, **kwargs):
        raise AssertionError("accountant built before the arguments were validated")

    monkeypatch.setattr(accountant_lib, "make_accountant", forbidden)


@pytest.mark.parametrize("delta", [0.0, -1e-5, 1.0, 1.5, float("nan")])
def test_epsilon_for_rejects_bad_delta(delta, no_compute):
    event = privacy.dp_sgd_event(**MNIST)
    with pytest.raises(ValueError, match=r"delta must be .*\(0, 1\)"):
        privacy.epsilon_for(event, delta=delta, accountant="rdp")


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.inf])
def test_delta_for_rejects_bad_epsilon(epsilon, no_compute):
    event = privacy.dp_sgd_event(**MNIST)
    with pytest.raises(ValueError, match=r"epsilon must be .*> 0"):
        privacy.delta_for(event, epsilon=epsilon, accountant="pld")


def test_unknown_accountant_is_rejected():
    with pytest.raises(ValueError, match="accountant must be one of"):
        privacy.epsilon_for(privacy.dp_sgd_event(**MNIST), delta=DELTA, accountant="moments")


def test_report_holds_both_epsilons_and_flattens():
    report = privacy.sampled_gaussian_report(**MNIST, delta=DELTA, unit="example")
    assert report.epsilon_rdp == pytest.approx(2.5966, abs=1e-3)
    assert report.epsilon_pld == pytest.approx(2.3817, abs=1e-3)
    assert report.epsilon == report.epsilon_pld
    # The RDP optimum should be interior to the order range (else the orders are too narrow).
    assert privacy.RDP_ORDERS[0] < report.rdp_optimal_order < privacy.RDP_ORDERS[-1]
    flat = report.as_dict()
    assert all(key.startswith("privacy.") for key in flat)
    assert flat["privacy.unit"] == "example"
    assert flat["privacy.relation"] == "add_remove_one"
    assert flat["privacy.delta"] == DELTA
    assert flat["privacy.steps"] == 14062
    assert flat["privacy.epsilon_pld"] == report.epsilon_pld
    assert flat["privacy.pld_value_discretization_interval"] == privacy.PLD_VALUE_DISCRETIZATION_INTERVAL
    assert flat["privacy.dp_accounting_version"] == "0.6.0"
    assert json.loads(json.dumps(flat)) == flat
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.delta = 0.1


def test_report_is_keyword_only_and_validates():
    with pytest.raises(TypeError):
        privacy.PrivacyReport("example")  # noqa: positional use must fail
    good = dict(unit="example", delta=DELTA, epsilon_rdp=1.0, epsilon_pld=0.9, noise_multiplier=1.0,
                sampling_rate=0.1, steps=10)
    assert privacy.PrivacyReport(**good).epsilon == 0.9
    for field, value in [("unit", "patient"), ("relation", "replace_one"), ("delta", 1.0),
                         ("sampling_rate", 0.0), ("steps", 0), ("epsilon_pld", -1.0)]:
        with pytest.raises(ValueError, match=field):
            privacy.PrivacyReport(**{**good, field: value})


def test_report_rejects_bad_delta_and_unit(no_compute):
    with pytest.raises(ValueError, match="delta"):
        privacy.sampled_gaussian_report(**MNIST, delta=1.0, unit="example")
    with pytest.raises(ValueError, match="unit"):
        privacy.sampled_gaussian_report(**MNIST, delta=DELTA, unit="patient")
