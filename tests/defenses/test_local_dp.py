"""LocalDPPlan and PrivUnit2: calibration against closed forms, KS tests, unbiasedness, accounting."""

import math

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from fedpriv.defenses import privunit as privunit_lib
from fedpriv.defenses.local_dp import LocalDPPlan
from fedpriv.defenses.local_dp import add_laplace_noise
from fedpriv.defenses.local_dp import clip_update_l1
from fedpriv.defenses.local_dp import clip_update_l2

# 20 000 coordinates over two leaves of different shapes.
ZEROS = {"kernel": jnp.zeros((100, 100)), "bias": jnp.zeros((10_000,))}
GAUSSIAN = LocalDPPlan(mechanism="gaussian", epsilon=2.0, delta=1e-5, l2_clip_norm=0.5)
LAPLACE = LocalDPPlan(mechanism="laplace", epsilon=1.5, l1_clip_norm=0.8)
PRIVUNIT = LocalDPPlan(mechanism="privunit", epsilon=2.0, l2_clip_norm=1.5)
# A 5-entry update (two leaves) inside the clip ball of PRIVUNIT (norm 0.9 < 1.5).
SMALL = {"a": jnp.array([0.3, -0.6, 0.0]), "b": jnp.array([0.6, 0.0])}
NUM_DRAWS = 20_000


def flat(tree):
    return np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree_util.tree_leaves(tree)])


# One jitted function per plan, shared by the tests so each shape compiles once.
JITTED = {plan: jax.jit(plan.privatize) for plan in (GAUSSIAN, LAPLACE)}
PRIVUNIT_VMAPPED = jax.jit(jax.vmap(PRIVUNIT.privatize, in_axes=(None, 0)))


def release(plan, update, key):
    return JITTED[plan](update, plan.state(key))


def privunit_many(update, key, count):
    keys = jax.random.split(key, count)
    released, _ = PRIVUNIT_VMAPPED(update, jax.vmap(PRIVUNIT.state)(keys))
    return np.concatenate([np.asarray(released["a"]), np.asarray(released["b"])], axis=1), keys


@pytest.fixture(scope="module")
def privunit_draws():
    """NUM_DRAWS releases of SMALL, one per client key."""
    return privunit_many(SMALL, jax.random.key(11), NUM_DRAWS)[0]


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    (dict(mechanism="gaussian", epsilon=0.0, delta=1e-5, l2_clip_norm=1.0), "epsilon"),
    (dict(mechanism="laplace", epsilon=-1.0, l1_clip_norm=1.0), "epsilon"),
    (dict(mechanism="privunit", epsilon=float("inf"), l2_clip_norm=1.0), "epsilon"),
    (dict(mechanism="gaussian", epsilon=1.0, delta=0.0, l2_clip_norm=1.0), "delta"),
    (dict(mechanism="gaussian", epsilon=1.0, delta=1.0, l2_clip_norm=1.0), "delta"),
    (dict(mechanism="gaussian", epsilon=1.0, l2_clip_norm=1.0), "delta"),
    (dict(mechanism="laplace", epsilon=1.0, delta=1e-5, l1_clip_norm=1.0), "delta"),
    (dict(mechanism="gaussian", epsilon=1.0, delta=1e-5, l2_clip_norm=0.0), "l2_clip_norm"),
    (dict(mechanism="privunit", epsilon=1.0, l2_clip_norm=-2.0), "l2_clip_norm"),
    (dict(mechanism="privunit", epsilon=1.0), "l2_clip_norm"),
    (dict(mechanism="laplace", epsilon=1.0, l1_clip_norm=0.0), "l1_clip_norm"),
    (dict(mechanism="laplace", epsilon=1.0, l2_clip_norm=1.0), "l2_clip_norm"),
    (dict(mechanism="duchi", epsilon=1.0, l2_clip_norm=1.0), "mechanism"),
])
def test_bad_fields_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LocalDPPlan(**kwargs)


def test_privunit_needs_two_entries_and_accounting_arguments_are_checked():
    with pytest.raises(ValueError, match="dimension"):
        PRIVUNIT.privatize({"w": jnp.ones((1,))}, PRIVUNIT.state(jax.random.key(0)))
    with pytest.raises(ValueError, match="rounds"):
        GAUSSIAN.epsilon_after(0, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        GAUSSIAN.epsilon_after(3)
    with pytest.raises(ValueError, match="laplace_scale"):
        GAUSSIAN.laplace_scale


# -- Gaussian: analytic calibration and the noise ---------------------------------------------

def balle_wang_delta(epsilon, sigma):
    """Balle & Wang 2018 (arXiv 1805.06530) Thm. 8 at sensitivity 1, written out independently."""
    return (stats.norm.cdf(1 / (2 * sigma) - epsilon * sigma)
            - math.exp(epsilon) * stats.norm.cdf(-1 / (2 * sigma) - epsilon * sigma))


@pytest.mark.parametrize("epsilon, delta", [(0.5, 1e-6), (2.0, 1e-5), (8.0, 1e-3)])
def test_gaussian_noise_multiplier_meets_the_analytic_gaussian_exactly(epsilon, delta):
    plan = LocalDPPlan(mechanism="gaussian", epsilon=epsilon, delta=delta, l2_clip_norm=0.5)
    assert balle_wang_delta(epsilon, plan.noise_multiplier) == pytest.approx(delta, rel=1e-6)
    assert plan.sensitivity == 1.0  # replace-one: the diameter 2 C of the clip ball
    assert plan.noise_stddev == plan.noise_multiplier * 1.0


def test_gaussian_pinned_reference_number():
    # shared/reference: one Gaussian release with sigma 1 at delta 1e-5 has epsilon 4.37718.
    plan = LocalDPPlan(mechanism="gaussian", epsilon=4.37718, delta=1e-5, l2_clip_norm=3.0)
    assert plan.noise_multiplier == pytest.approx(1.0, abs=1e-5)
    assert plan.noise_stddev == pytest.approx(6.0, abs=1e-4)


def test_gaussian_noise_passes_ks_at_the_right_scale_and_fails_at_wrong_ones():
    samples = flat(release(GAUSSIAN, ZEROS, jax.random.key(0))[0])
    stddev = GAUSSIAN.noise_stddev
    assert stats.kstest(samples / stddev, "norm").pvalue > 0.01
    assert stats.kstest(samples / (stddev * 2 / 3), "norm").pvalue < 1e-6
    assert stats.kstest(samples / (stddev * 3 / 2), "norm").pvalue < 1e-6
    # The replace-one factor 2 matters: noise sized for sensitivity C (add/remove) is rejected.
    assert stats.kstest(samples / (stddev / 2), "norm").pvalue < 1e-6


def test_laplace_noise_passes_ks_at_the_right_scale_and_fails_at_wrong_ones():
    samples = flat(release(LAPLACE, ZEROS, jax.random.key(1))[0])
    scale = LAPLACE.laplace_scale
    assert scale == pytest.approx(2 * 0.8 / 1.5)
    assert stats.kstest(samples / scale, "laplace").pvalue > 0.01
    assert stats.kstest(samples / (scale * 2 / 3), "laplace").pvalue < 1e-6
    assert stats.kstest(samples / (scale * 3 / 2), "laplace").pvalue < 1e-6
    assert stats.kstest(samples / np.std(samples), "norm").pvalue < 1e-6  # it is not Gaussian


def test_add_laplace_noise_transform_matches_the_plan():
    transform = add_laplace_noise(LAPLACE.laplace_scale, jax.random.key(2))
    noised, state = transform.update(ZEROS, transform.init(ZEROS))
    np.testing.assert_array_equal(flat(noised), flat(release(LAPLACE, ZEROS, jax.random.key(2))[0]))
    with pytest.raises(ValueError, match="scale"):
        add_laplace_noise(-1.0, jax.random.key(0))


def test_clipping_is_of_the_whole_update_in_the_right_norm():
    update = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "b": jnp.array([0.0])}  # L2 5, L1 7
    l2 = flat(clip_update_l2(update, 0.5))
    np.testing.assert_allclose(np.sort(l2), np.sort(np.array([0.3, 0, 0, 0.4, 0])), rtol=1e-6, atol=1e-7)
    l1 = flat(clip_update_l1(update, 0.7))
    assert np.abs(l1).sum() == pytest.approx(0.7, rel=1e-6)
    inside = {"w": jnp.full((2, 2), 0.1), "b": jnp.array([0.1])}
    np.testing.assert_array_equal(flat(clip_update_l2(inside, 0.5)), flat(inside))
    # The released update is the clipped update plus the same noise a zero update gets.
    key = jax.random.key(3)
    noised = flat(release(GAUSSIAN, update, key)[0])
    noise = flat(release(GAUSSIAN, jax.tree_util.tree_map(jnp.zeros_like, update), key)[0])
    np.testing.assert_allclose(noised - noise, flat(GAUSSIAN.clip(update)), atol=1e-5)
    noised = flat(release(LAPLACE, update, key)[0])
    noise = flat(release(LAPLACE, jax.tree_util.tree_map(jnp.zeros_like, update), key)[0])
    np.testing.assert_allclose(noised - noise, flat(clip_update_l1(update, 0.8)), atol=1e-5)


@pytest.mark.parametrize("plan", [GAUSSIAN, LAPLACE], ids=lambda plan: plan.mechanism)
def test_same_key_is_bit_identical_and_states_advance(plan):
    first, state = release(plan, SMALL, jax.random.key(4))
    again, _ = release(plan, SMALL, jax.random.key(4))
    np.testing.assert_array_equal(flat(first), flat(again))
    second, _ = JITTED[plan](SMALL, state)
    assert not np.array_equal(flat(first), flat(second))
    transform = plan.transform(jax.random.key(4))
    via_transform, _ = jax.jit(transform.update)(SMALL, transform.init(SMALL))
    np.testing.assert_array_equal(flat(via_transform), flat(first))


def test_privunit_same_keys_are_bit_identical_and_states_advance(privunit_draws):
    # Through the vmapped function the other PrivUnit tests compiled (one compile for all).
    again, keys = privunit_many(SMALL, jax.random.key(11), NUM_DRAWS)
    np.testing.assert_array_equal(again, privunit_draws)
    _, states = PRIVUNIT_VMAPPED(SMALL, jax.vmap(PRIVUNIT.state)(keys))
    advanced, _ = PRIVUNIT_VMAPPED(SMALL, states)
    advanced = np.concatenate([np.asarray(advanced["a"]), np.asarray(advanced["b"])], axis=1)
    assert not np.any(np.all(advanced == privunit_draws, axis=1))


def test_vmapped_clients_get_distinct_gaussian_noise():
    num_clients = 4
    keys = jax.random.split(jax.random.key(5), num_clients)
    client_zeros = jax.tree_util.tree_map(lambda leaf: jnp.zeros((num_clients, *leaf.shape)), ZEROS)
    noised, _ = jax.jit(jax.vmap(GAUSSIAN.privatize))(client_zeros, jax.vmap(GAUSSIAN.state)(keys))
    per_client = np.stack([flat(jax.tree_util.tree_map(lambda leaf: leaf[c], noised)) for c in range(num_clients)])
    correlations = np.corrcoef(per_client)
    assert np.all(np.abs(correlations[~np.eye(num_clients, dtype=bool)]) < 0.05)
    np.testing.assert_allclose(per_client[2], flat(release(GAUSSIAN, ZEROS, keys[2])[0]), rtol=1e-6, atol=1e-6)


# -- PrivUnit2 -------------------------------------------------------------------------------

def cap_mass_by_quadrature(threshold, dimension):
    density = lambda t: (1 - t * t) ** ((dimension - 3) / 2)
    total = integrate.quad(density, -1, 1)[0]
    return integrate.quad(density, threshold, 1)[0] / total


def scale_by_quadrature(p, threshold, dimension):
    density = lambda t: (1 - t * t) ** ((dimension - 3) / 2)
    cap = integrate.quad(density, threshold, 1)[0]
    rest = integrate.quad(density, -1, threshold)[0]
    mean_in_cap = integrate.quad(lambda t: t * density(t), threshold, 1)[0] / cap
    mean_outside = integrate.quad(lambda t: t * density(t), -1, threshold)[0] / rest
    return p * mean_in_cap + (1 - p) * mean_outside


@pytest.mark.parametrize("epsilon, dimension", [(0.5, 3), (2.0, 5), (2.0, 40), (6.0, 200)])
def test_privunit_constants_match_quadrature_and_spend_exactly_epsilon(epsilon, dimension):
    parameters = privunit_lib.privunit_parameters(epsilon, dimension)
    cap_mass = cap_mass_by_quadrature(parameters.threshold, dimension)
    assert parameters.cap_mass == pytest.approx(cap_mass, rel=1e-7)
    p = parameters.cap_probability
    # The worst-case density ratio: inside the cap of u but outside the cap of u'.
    ratio = (p / cap_mass) / ((1 - p) / (1 - cap_mass))
    assert math.log(ratio) == pytest.approx(epsilon, rel=1e-7)
    assert parameters.epsilon == pytest.approx(epsilon, rel=1e-9)
    assert parameters.scale == pytest.approx(scale_by_quadrature(p, parameters.threshold, dimension), rel=1e-6)
    # The split maximises m: nudging the coin's share either way only lowers it.
    for shift in (-0.05, 0.05):
        coin = math.log(p / (1 - p)) + shift
        if 0 <= coin <= epsilon:
            assert privunit_lib._split(epsilon, coin, dimension)[3] <= parameters.scale * (1 + 1e-9)


def test_privunit_caps_the_cap_epsilon_for_large_budgets():
    # Above MAX_CAP_EPSILON the coin takes the rest: still exactly epsilon, sampler stays fast.
    parameters = privunit_lib.privunit_parameters(24.0, 1000)
    cap_epsilon = math.log((1 - parameters.cap_mass) / parameters.cap_mass)
    assert cap_epsilon <= privunit_lib.MAX_CAP_EPSILON + 1e-6
    assert parameters.epsilon == pytest.approx(24.0, rel=1e-9)
    assert parameters.cap_mass > 4e-5


def test_privunit_on_the_circle_matches_the_arc_length_formula():
    parameters = privunit_lib.privunit_parameters(1.0, 2)
    assert parameters.cap_mass == pytest.approx(math.acos(parameters.threshold) / math.pi, rel=1e-9)


def test_privunit_is_unbiased(privunit_draws):
    mean = privunit_draws.mean(axis=0)
    standard_error = privunit_draws.std(axis=0) / math.sqrt(NUM_DRAWS)
    z_scores = (mean - flat(SMALL)) / standard_error
    assert np.max(np.abs(z_scores)) < 4.0, z_scores


def test_privunit_outputs_have_the_exact_norm(privunit_draws):
    expected = 1.5 * PRIVUNIT.privunit_parameters(5).output_norm
    np.testing.assert_allclose(np.linalg.norm(privunit_draws, axis=1), expected, rtol=2e-6)


def test_privunit_cap_coordinate_has_the_promised_law(privunit_draws):
    # For the unit input u, t = <V, u> is a p : (1 - p) mixture of the law of a uniform
    # point's coordinate, (1 + t) / 2 ~ Beta((d-1)/2, (d-1)/2), above / below gamma. The plan
    # feeds u = x/|x| with probability (1 + |x|/C) / 2 and u = -x/|x| otherwise, so
    # <V, x/|x|> is the matching mixture of t and -t.
    parameters = PRIVUNIT.privunit_parameters(5)
    direction = flat(SMALL) / np.linalg.norm(flat(SMALL))
    t = privunit_draws @ direction * parameters.scale / 1.5
    beta = stats.beta(2.0, 2.0)  # alpha = (5 - 1) / 2
    gamma = parameters.threshold
    cap = 1 - beta.cdf((1 + gamma) / 2)
    keep = (1 + 0.9 / 1.5) / 2

    def cdf(s, p):
        def given_u(v):
            below = beta.cdf((1 + np.minimum(v, gamma)) / 2) / (1 - cap)
            above = np.clip(beta.cdf((1 + v) / 2) - beta.cdf((1 + gamma) / 2), 0, None) / cap
            return (1 - p) * below + p * above
        return keep * given_u(s) + (1 - keep) * (1 - given_u(-s))

    assert stats.kstest(t, lambda s: cdf(s, parameters.cap_probability)).pvalue > 0.01
    assert stats.kstest(t, lambda s: cdf(s, parameters.cap_probability - 0.05)).pvalue < 1e-6


def test_privunit_clips_large_updates_and_vmapped_clients_differ():
    big = {"a": jnp.array([30.0, 40.0, 0.0]), "b": jnp.zeros((2,))}  # norm 50 >> C = 1.5
    draws, _ = privunit_many(big, jax.random.key(6), NUM_DRAWS)
    clipped = np.array([0.9, 1.2, 0.0, 0.0, 0.0])
    z_scores = (draws.mean(0) - clipped) / (draws.std(0) / math.sqrt(len(draws)))
    assert np.max(np.abs(z_scores)) < 4.0, z_scores
    assert len({tuple(row) for row in draws[:100].tolist()}) == 100  # distinct client draws


def test_coordinate_proposals_follow_the_symmetric_beta_law():
    for alpha in (0.5, 5e5):  # the boosted (d = 2) and the large-d paths; d = 5 is tested above
        t, valid = privunit_lib._coordinate_proposals(jax.random.key(7), alpha, 20_000)
        accepted = np.asarray(t)[np.asarray(valid)]
        assert accepted.size > 18_000  # Marsaglia-Tsang accepts > 95 % per gamma draw
        assert stats.kstest((1 + accepted) / 2, stats.beta(alpha, alpha).cdf).pvalue > 0.01
        assert stats.kstest((1 + accepted) / 2, stats.beta(1.2 * alpha, 1.2 * alpha).cdf).pvalue < 1e-4


# -- accounting ------------------------------------------------------------------------------

def test_gaussian_composition_matches_the_closed_form():
    # k Gaussian releases with noise multiplier s are one release with s / sqrt(k), exactly.
    from dp_accounting import gaussian_mechanism
    assert GAUSSIAN.epsilon_after(1, delta=1e-5) == pytest.approx(2.0, abs=2e-3)
    for rounds in (1, 10, 50):
        exact = gaussian_mechanism.get_epsilon_gaussian(GAUSSIAN.noise_multiplier / math.sqrt(rounds), 1e-5)
        assert GAUSSIAN.epsilon_after(rounds, delta=1e-5) == pytest.approx(exact, abs=2e-3)
        assert GAUSSIAN.epsilon_after(rounds, delta=1e-5, accountant="rdp") >= exact
    assert GAUSSIAN.accounting_relation == dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    assert GAUSSIAN.basic_composition(10) == (20.0, pytest.approx(1e-4))


@pytest.mark.parametrize("rounds", [1, 10, 100])
def test_pure_composition_matches_pld_of_randomized_responses(rounds):
    pld = pld_privacy_accountant.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    pld.compose(LAPLACE.dp_event(rounds))
    reference = pld.get_epsilon(1e-6)
    assert LAPLACE.epsilon_after(rounds, delta=1e-6) == pytest.approx(reference, rel=1e-6)
    assert LAPLACE.epsilon_after(rounds, delta=1e-6) <= LAPLACE.basic_composition(rounds)[0]
    assert LAPLACE.epsilon_after(rounds) == LAPLACE.basic_composition(rounds)[0] == 1.5 * rounds


def test_pure_composition_pinned_numbers():
    plan = LocalDPPlan(mechanism="privunit", epsilon=1.0, l2_clip_norm=1.0)
    # 100 rounds at epsilon 1, delta 1e-6: the optimal composition (Kairouz et al. 2015).
    assert plan.epsilon_after(100, delta=1e-6) == pytest.approx(83.5307, abs=1e-3)
    # Advanced composition (Dwork, Rothblum, Vadhan 2010) is a valid but looser bound.
    k, eps, delta = 1000, 0.1, 1e-6
    advanced = math.sqrt(2 * k * math.log(1 / delta)) * eps + k * eps * (math.exp(eps) - 1)
    exact = LocalDPPlan(mechanism="privunit", epsilon=eps, l2_clip_norm=1.0).epsilon_after(k, delta=delta)
    assert exact < advanced < k * eps
