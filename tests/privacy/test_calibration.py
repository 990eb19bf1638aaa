"""Calibration: the returned noise multiplier meets the budget, within 1 %, for both accountants."""

import math

import dp_accounting
import pytest

from fedpriv import privacy

DELTA = 1e-5


@pytest.mark.parametrize("accountant, target_epsilon, sampling_rate, steps", [
    ("rdp", 2.0, 256 / 60000, 14062),  # MNIST DP-SGD setup (Abadi et al. 2016, arXiv 1607.00133)
    ("rdp", 10.0, 1.0, 100),           # cross-silo, every hospital every round
    ("pld", 1.0, 0.01, 1000),
    ("pld", 4.0, 1.0, 10),
])
def test_calibrated_noise_meets_the_budget_within_one_percent(accountant, target_epsilon, sampling_rate, steps):
    sigma = privacy.calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=DELTA,
                                               sampling_rate=sampling_rate, steps=steps, accountant=accountant)
    event = privacy.dp_sgd_event(noise_multiplier=sigma, sampling_rate=sampling_rate, steps=steps)
    epsilon = privacy.epsilon_for(event, delta=DELTA, accountant=accountant)
    assert 0.99 * target_epsilon <= epsilon <= target_epsilon
    # Minimal: 1 % less noise overspends the budget.
    less_noise = privacy.dp_sgd_event(noise_multiplier=0.99 * sigma, sampling_rate=sampling_rate, steps=steps)
    assert privacy.epsilon_for(less_noise, delta=DELTA, accountant=accountant) > target_epsilon


def test_one_release_calibrates_to_the_analytic_gaussian():
    # One Gaussian release: the optimal sigma is the analytic Gaussian mechanism's (Balle & Wang
    # 2018, arXiv 1805.06530), dp_accounting.get_sigma_gaussian. PLD's pessimistic grid may ask a
    # hair more noise, never less.
    analytic = dp_accounting.get_sigma_gaussian(1.0, DELTA)
    sigma = privacy.calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sampling_rate=1.0, steps=1,
                                               accountant="pld")
    assert analytic <= sigma * (1 + 1e-5)
    assert sigma == pytest.approx(analytic, rel=1e-3)


def test_pld_needs_less_noise_than_rdp():
    kwargs = dict(target_epsilon=3.0, delta=DELTA, sampling_rate=1.0, steps=10)
    rdp = privacy.calibrate_noise_multiplier(**kwargs, accountant="rdp")
    pld = privacy.calibrate_noise_multiplier(**kwargs, accountant="pld")
    assert pld < rdp
    # Full participation: steps releases with sigma equal one with sigma / sqrt(steps).
    assert pld / math.sqrt(10) == pytest.approx(dp_accounting.get_sigma_gaussian(3.0, DELTA), rel=1e-3)


@pytest.mark.parametrize("kwargs, field", [
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(delta=0.0), "delta"),
    (dict(delta=1.0), "delta"),
    (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(sampling_rate=1.01), "sampling_rate"),
    (dict(steps=0), "steps"),
    (dict(accountant="moments"), "accountant"),
])
def test_calibration_rejects_bad_arguments(kwargs, field):
    good = dict(target_epsilon=1.0, delta=DELTA, sampling_rate=0.1, steps=10, accountant="rdp")
    with pytest.raises(ValueError, match=field):
        privacy.calibrate_noise_multiplier(**{**good, **kwargs})
