"""DPSGDPlan: the one place DP-SGD is composed (DESIGN §4)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv import defenses
from fedpriv import privacy

DELTA = 1e-5
PLAN = dict(l2_clip_norm=0.5, noise_multiplier=1.3, sampling_rate=0.02, steps=500, expected_batch_size=16.0)


def per_example_grads(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(batch, 6, 5)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(batch, 5)), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(batch, 5, 2000)), jnp.float32)}}


def test_noise_stddev_is_noise_multiplier_times_sensitivity():
    plan = defenses.DPSGDPlan(**PLAN)
    assert plan.sensitivity == 0.5  # add/remove-one: one example moves the clipped sum by <= C
    assert plan.noise_stddev == 1.3 * 0.5
    assert plan.noise_stddev == pytest.approx(0.65)
    assert plan.unit == "example"


def test_without_noise_the_private_gradient_is_the_clipped_mean_exactly():
    plan = defenses.DPSGDPlan(**{**PLAN, "noise_multiplier": 0.0})
    grads = per_example_grads()
    mask = jnp.array([1, 1, 1, 0, 1, 1, 0, 1], jnp.float32)
    gradient, _, aux = plan.private_gradient(grads, mask, plan.noise_state(jax.random.key(0)))
    summed, fraction = defenses.clipped_sum(grads, mask, plan.l2_clip_norm)
    jax.tree_util.tree_map(lambda g, s: np.testing.assert_array_equal(np.asarray(g), np.asarray(s / 16.0)),
                           gradient, summed)
    assert float(aux["fraction_clipped"]) == float(fraction) == 1.0  # all norms >> 0.5
    assert float(aux["num_examples"]) == 6.0


def test_noise_goes_on_the_sum_and_the_division_comes_after():
    # With every example masked out the gradient is pure noise / expected_batch_size, so it must
    # be N(0, (sigma * C / expected_batch_size)^2) per coordinate (Abadi et al. 2016, Alg. 1).
    plan = defenses.DPSGDPlan(**PLAN)
    grads = per_example_grads()
    gradient, _, _ = plan.private_gradient(grads, jnp.zeros(8), plan.noise_state(jax.random.key(1)))
    samples = np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree_util.tree_leaves(gradient)])
    assert samples.size > 10_000
    expected_stddev = 1.3 * 0.5 / 16.0
    assert stats.kstest(samples / expected_stddev, "norm").pvalue > 0.01
    # Noise added after dividing (stddev sigma * C) or on the mean of the realised batch would fail.
    assert stats.kstest(samples / (1.3 * 0.5), "norm").pvalue < 1e-6
    assert stats.kstest(samples / (expected_stddev * 1.5), "norm").pvalue < 1e-6


def test_private_gradient_is_jit_and_vmap_friendly_with_distinct_client_noise():
    plan = defenses.DPSGDPlan(**PLAN)
    num_clients = 3
    grads = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf] * num_clients), per_example_grads())
    masks = jnp.ones((num_clients, 8))
    states = jax.vmap(plan.noise_state)(jax.random.split(jax.random.key(2), num_clients))

    @jax.jit
    def step(grads, masks, states):
        return jax.vmap(plan.private_gradient)(grads, masks, states)

    gradient, new_states, _ = step(grads, masks, states)
    kernels = np.asarray(gradient["head"]["kernel"]).reshape(num_clients, -1)
    # Same data, different noise: the clients' gradients differ.
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
    # The key advances: the next step draws fresh noise.
    again, _, _ = step(grads, masks, new_states)
    assert not np.allclose(np.asarray(again["head"]["kernel"])[0], kernels[0].reshape(5, 2000))
    # Client 0 under vmap+jit == the eager single-client call.
    eager, _, _ = plan.private_gradient(per_example_grads(), masks[0], jax.tree_util.tree_map(lambda s: s[0], states))
    np.testing.assert_allclose(np.asarray(eager["head"]["kernel"]).ravel(), kernels[0], rtol=1e-5, atol=1e-6)


def test_plan_is_hashable_static_config():
    plan = defenses.DPSGDPlan(**PLAN)
    assert plan == defenses.DPSGDPlan(**PLAN) and hash(plan) == hash(defenses.DPSGDPlan(**PLAN))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.noise_multiplier = 0.0
    with pytest.raises(TypeError):
        defenses.DPSGDPlan(0.5, 1.3, 0.02, 500, 16.0)  # keyword-only


def test_noise_transform_has_the_plan_stddev():
    plan = defenses.DPSGDPlan(**PLAN)
    zeros = {"w": jnp.zeros((20_000,))}
    transform = plan.noise(jax.random.key(3))
    noised, _ = transform.update(zeros, transform.init(zeros))
    assert stats.kstest(np.asarray(noised["w"]) / plan.noise_stddev, "norm").pvalue > 0.01


def test_event_and_report_match_the_accountant():
    plan = defenses.DPSGDPlan(**PLAN)
    event = privacy.dp_sgd_event(noise_multiplier=1.3, sampling_rate=0.02, steps=500)
    assert plan.dp_event() == event
    report = plan.report(DELTA)
    assert report.unit == "example" and report.relation == "add_remove_one"
    assert report.epsilon_rdp == privacy.epsilon_for(event, delta=DELTA, accountant="rdp")
    assert report.epsilon_pld == privacy.epsilon_for(event, delta=DELTA, accountant="pld")
    assert report.epsilon_pld < report.epsilon_rdp
    assert (report.noise_multiplier, report.sampling_rate, report.steps, report.delta) == (1.3, 0.02, 500, DELTA)


def test_mnist_plan_reports_the_pinned_epsilons():
    # reference README, row "MNIST DP-SGD": RDP 2.5966, PLD 2.3817 (Abadi et al. 2016, arXiv 1607.00133).
    plan = defenses.DPSGDPlan(l2_clip_norm=4.0, noise_multiplier=1.1, sampling_rate=256 / 60000, steps=14062,
                              expected_batch_size=256.0)
    report = plan.report(DELTA)
    assert report.epsilon_rdp == pytest.approx(2.5966, abs=1e-3)
    assert report.epsilon_pld == pytest.approx(2.3817, abs=1e-3)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrated_plan_meets_the_budget(accountant):
    # A setting with sigma > 1 (about 1.34 under PLD), where PLD probes are cheap.
    plan = defenses.DPSGDPlan.calibrated(target_epsilon=2.0, delta=DELTA, l2_clip_norm=1.0, sampling_rate=0.05,
                                         steps=100, expected_batch_size=16.0, accountant=accountant)
    epsilon = privacy.epsilon_for(plan.dp_event(), delta=DELTA, accountant=accountant)
    assert 0.99 * 2.0 <= epsilon <= 2.0
    assert (plan.sampling_rate, plan.steps, plan.expected_batch_size) == (0.05, 100, 16.0)
    assert plan.noise_stddev == plan.noise_multiplier * 1.0 and plan.l2_clip_norm == 1.0


@pytest.mark.parametrize("field, value", [
    ("l2_clip_norm", 0.0), ("l2_clip_norm", -1.0), ("l2_clip_norm", float("inf")),
    ("noise_multiplier", -0.5),
    ("sampling_rate", 0.0), ("sampling_rate", 1.5),
    ("steps", 0), ("steps", 10.5),
    ("expected_batch_size", 0.0),
])
def test_bad_plan_fields_are_rejected(field, value):
    with pytest.raises(ValueError, match=field) as error:
        defenses.DPSGDPlan(**{**PLAN, field: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


@pytest.mark.parametrize("delta", [1.0, 1.5, 0.0, -1e-5])
def test_report_rejects_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        defenses.DPSGDPlan(**PLAN).report(delta)


@pytest.mark.parametrize("kwargs, field", [
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(target_epsilon=-2.0), "target_epsilon"),
    (dict(delta=1.0), "delta"),
    (dict(delta=0.0), "delta"),
    (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(sampling_rate=2.0), "sampling_rate"),
    (dict(l2_clip_norm=0.0), "l2_clip_norm"),
])
def test_calibrated_rejects_bad_arguments(kwargs, field):
    good = dict(target_epsilon=3.0, delta=DELTA, l2_clip_norm=1.0, sampling_rate=0.02, steps=500,
                expected_batch_size=16.0)
    with pytest.raises(ValueError, match=field):
        defenses.DPSGDPlan.calibrated(**{**good, **kwargs})


def test_scheduled_plan_accounts_the_composed_sequence():
    # The plan's event is the hand-built composition of each round's sampled Gaussian.
    import dp_accounting

    from fedpriv.privacy import epsilon_for
    schedule = (2.0, 1.5, 1.5, 1.0)
    plan = defenses.DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.1, steps=8, expected_batch_size=4.0,
                     round_noise_multipliers=schedule)
    assert plan.steps_per_round == 2
    assert [plan.noise_multiplier_in_round(r) for r in range(4)] == list(schedule)
    by_hand = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(sigma)), 2)
        for sigma in schedule])
    for accountant in ("rdp", "pld"):
        assert epsilon_for(plan.dp_event(), delta=1e-5, accountant=accountant) == pytest.approx(
            epsilon_for(by_hand, delta=1e-5, accountant=accountant), rel=1e-9)
    report = plan.report(1e-5)
    assert report.epsilon_pld <= report.epsilon_rdp
    with pytest.raises(ValueError, match="round_noise_multipliers"):
        defenses.DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.1, steps=7, expected_batch_size=4.0,
                  round_noise_multipliers=schedule)
