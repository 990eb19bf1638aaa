import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv.defenses.dp_fedavg import DPFedAvgPlan


def _plan(**overrides):
    settings = dict(l2_clip_norm=1.0, noise_multiplier=0.0, client_sampling_rate=0.5, rounds=10,
                    expected_clients_per_round=2.0)
    settings.update(overrides)
    return DPFedAvgPlan(**settings)


def test_clip_matches_an_explicit_loop_and_drops_absent_and_nonfinite_clients():
    updates = {"a": jnp.array([[3.0, 4.0], [0.3, 0.4], [1.0, np.nan], [9.0, 9.0]]),
               "b": jnp.array([[0.0], [0.0], [1.0], [1.0]])}
    client_mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    clipped, kept, aux = _plan().clip_updates(updates, client_mask)
    np.testing.assert_array_equal(kept, [1.0, 1.0, 0.0, 0.0])
    expected = np.array([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [0.0, 0.0]])  # norm 5 -> 1; norm 0.5 kept
    np.testing.assert_allclose(clipped["a"], expected, rtol=1e-6)
    np.testing.assert_array_equal(clipped["b"][:, 0], [0.0, 0.0, 0.0, 0.0])
    assert int(aux["num_nonfinite"]) == 1
    assert float(aux["fraction_clipped"]) == pytest.approx(0.5)


def test_noise_is_on_the_sum_at_sigma_times_clip_then_divided_by_the_expected_cohort():
    plan = _plan(noise_multiplier=2.0, l2_clip_norm=0.5, expected_clients_per_round=4.0)
    zeros = {"w": jnp.zeros(20000)}
    noised = plan.noised_mean(zeros, jax.random.key(0))["w"]
    right = stats.kstest(np.asarray(noised), "norm", args=(0.0, 2.0 * 0.5 / 4.0)).pvalue
    wrong = stats.kstest(np.asarray(noised), "norm", args=(0.0, 2.0 * 0.5)).pvalue
    assert right > 1e-3 and wrong < 1e-6
    no_noise = _plan(expected_clients_per_round=4.0).noised_mean({"w": jnp.array([8.0])}, jax.random.key(0))
    np.testing.assert_allclose(no_noise["w"], [2.0])


def test_event_is_the_client_level_sampled_gaussian_and_epsilon_matches_dp_accounting():
    plan = _plan(noise_multiplier=1.1, client_sampling_rate=0.1, rounds=200, expected_clients_per_round=10)
    report = plan.report(1e-5)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.1)), 200))
    assert report.unit == "client"
    assert report.epsilon_rdp == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)
    assert report.epsilon_pld <= report.epsilon_rdp


def test_calibrated_plan_meets_its_target():
    plan = DPFedAvgPlan.calibrated(target_epsilon=3.0, delta=1e-5, l2_clip_norm=1.0, client_sampling_rate=1.0,
                                   rounds=50, expected_clients_per_round=4)
    epsilon = plan.report(1e-5).epsilon_rdp
    assert 0.99 * 3.0 <= epsilon <= 3.0


@pytest.mark.parametrize("field, value", [("l2_clip_norm", 0.0), ("noise_multiplier", -1.0),
                                          ("client_sampling_rate", 1.5), ("rounds", 0),
                                          ("expected_clients_per_round", 0.0)])
def test_bad_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        _plan(**{field: value})


def test_schedule_must_cover_every_round():
    with pytest.raises(ValueError, match="round_noise_multipliers"):
        _plan(round_noise_multipliers=(1.0, 2.0))
    plan = _plan(rounds=2, round_noise_multipliers=(1.0, 2.0))
    assert plan.noise_multiplier_in_round(1) == 2.0


def test_white_box_canary_audit_of_one_round_stays_below_epsilon_and_catches_a_quarter_of_the_noise():
    from fedpriv import privacy
    from fedpriv.privacy.canaries import MisreportedMechanism, run_gradient_canary_trials

    plan = _plan(noise_multiplier=1.0, client_sampling_rate=1.0, rounds=1, expected_clients_per_round=1.0)
    claimed = plan.report(1e-5).epsilon
    honest = run_gradient_canary_trials(plan, 2000, jax.random.key(0))
    honest_bound = privacy.clopper_pearson_audit(honest.present_scores, honest.absent_scores, delta=1e-5,
                                                 threshold_selection="split").epsilon_lower_bound
    buggy = MisreportedMechanism.with_noise_scaled(plan, 0.25)
    trials = run_gradient_canary_trials(buggy, 2000, jax.random.key(1))
    buggy_bound = privacy.clopper_pearson_audit(trials.present_scores, trials.absent_scores, delta=1e-5,
                                                threshold_selection="split").epsilon_lower_bound
    assert 0.0 <= honest_bound <= claimed
    assert buggy_bound > claimed  # the audit catches a plan that adds a quarter of its noise
