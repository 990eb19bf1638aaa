import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.data.client_data import build_round_data
from fedpriv.defenses.tiered_dp_sgd import TieredDPSGDPlan
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.defenses.noise import GaussianNoiseState

BUDGETS = {"general": 8.0, "mental_health": 3.0, "substance_use": 2.0, "genomic": 1.0}


@pytest.fixture(scope="module", params=["scale", pytest.param("sample", marks=pytest.mark.slow)])
def plan(request):
    return TieredDPSGDPlan.calibrated(budgets=BUDGETS, delta=1e-5, method=request.param, l2_clip_norm=1.0,
                                      sampling_rate=0.05, steps=200, expected_batch_size=5.0)


def test_every_tier_stays_within_its_budget_and_stricter_tiers_get_more_protection(plan):
    reports = plan.tier_reports(1e-5)
    for tier, budget in BUDGETS.items():
        assert reports[tier].epsilon_rdp <= budget * (1 + 1e-9)
        assert reports[tier].epsilon_rdp >= 0.97 * budget  # calibrated, not wasted
    order = sorted(BUDGETS, key=BUDGETS.get)  # strictest first
    epsilons = [reports[tier].epsilon_rdp for tier in order]
    assert epsilons == sorted(epsilons)
    clips = dict(zip(plan.tier_names, plan.clip_norms))
    rates = dict(zip(plan.tier_names, plan.sampling_rates))
    for stricter, looser in zip(order, order[1:]):
        assert clips[stricter] <= clips[looser] and rates[stricter] <= rates[looser]
    assert plan.report(1e-5).epsilon == max(report.epsilon for report in reports.values())


def test_scale_clips_each_example_to_its_tier_norm_like_an_explicit_loop():
    plan = TieredDPSGDPlan.calibrated(budgets={"general": 8.0, "genomic": 1.0}, delta=1e-5, method="scale",
                                      l2_clip_norm=1.0, sampling_rate=0.1, steps=50, expected_batch_size=2.0)
    plan = TieredDPSGDPlan(**{**plan.__dict__, "noise_stddev": 0.0})
    grads = {"w": jnp.array([[3.0, 4.0], [3.0, 4.0], [0.03, 0.04]])}
    tiers = jnp.array([0, 1, 1])
    gradient, _, aux = plan.private_gradient(grads, jnp.ones(3), GaussianNoiseState(jax.random.key(0)),
                                             example_tiers=tiers)
    expected = np.zeros(2)
    for row, tier in zip(np.asarray(grads["w"]), [0, 1, 1]):
        norm = np.linalg.norm(row)
        expected += row * min(1.0, plan.clip_norms[tier] / norm)
    np.testing.assert_allclose(gradient["w"], expected / 2.0, rtol=1e-5)
    assert plan.clip_norms[1] < plan.clip_norms[0] == 1.0
    assert float(aux["fraction_clipped"]) == pytest.approx(2 / 3)


def test_sample_rates_reach_the_data_layer_per_record():
    plan = TieredDPSGDPlan.calibrated(budgets={"general": 8.0, "genomic": 1.0}, delta=1e-5, method="sample",
                                      l2_clip_norm=1.0, sampling_rate=0.2, steps=50, expected_batch_size=2.0)
    record_tiers = np.repeat([0, 1], 500)
    rates = plan.record_sampling_rates(record_tiers)
    data = build_round_data(np.zeros((1000, 2), np.float32), np.zeros(1000, np.int32), [np.arange(1000)],
                            local_steps=40, sampling="poisson", sampling_rate=rates,
                            generator=np.random.default_rng(0), record_tiers=record_tiers)
    ids = np.asarray(data.record_ids).ravel()
    ids = ids[ids >= 0]
    assert (ids < 500).sum() / (40 * 500) == pytest.approx(0.2, rel=0.05)
    assert (ids >= 500).sum() / (40 * 500) == pytest.approx(plan.sampling_rates[1], rel=0.1)
    tiers = np.asarray(data.examples["tier"]).ravel()[np.asarray(data.record_ids).ravel() >= 0]
    np.testing.assert_array_equal(tiers, (ids >= 500).astype(int))


def test_client_update_runs_the_tiered_plan_and_needs_tier_ids():
    plan = TieredDPSGDPlan.calibrated(budgets={"general": 8.0, "genomic": 1.0}, delta=1e-5, method="scale",
                                      l2_clip_norm=1.0, sampling_rate=0.5, steps=10, expected_batch_size=2.0)
    from tests.federated.conftest import scalar_mean_model
    update_fn = make_client_update(scalar_mean_model(), LocalTrainingConfig(learning_rate=1.0), plan)
    examples = {"x": jnp.array([[2.0, 4.0]]), "y": jnp.zeros((1, 2), jnp.int32), "tier": jnp.array([[0, 1]])}
    update, _ = update_fn({"w": jnp.float32(0.0)}, examples, jnp.ones((1, 2)), jax.random.key(0))
    assert np.isfinite(float(update["w"]))
    with pytest.raises(ValueError, match="tier"):
        update_fn({"w": jnp.float32(0.0)}, {"x": examples["x"], "y": examples["y"]}, jnp.ones((1, 2)),
                  jax.random.key(0))


@pytest.mark.parametrize("budgets, match", [({}, "budgets"), ({"general": 8.0, "genomic": None}, "genomic"),
                                            ({"general": 8.0, "genomic": -1.0}, "genomic")])
def test_a_tier_without_a_valid_budget_is_refused(budgets, match):
    with pytest.raises(ValueError, match=match):
        TieredDPSGDPlan.calibrated(budgets=budgets, delta=1e-5, method="scale", l2_clip_norm=1.0,
                                   sampling_rate=0.1, steps=10, expected_batch_size=1.0)


def test_records_with_an_unknown_tier_are_refused():
    plan = TieredDPSGDPlan.calibrated(budgets={"general": 8.0}, delta=1e-5, method="scale", l2_clip_norm=1.0,
                                      sampling_rate=0.1, steps=10, expected_batch_size=1.0)
    with pytest.raises(ValueError, match="tier"):
        plan.record_sampling_rates(np.array([0, 1]))
