"""Membership inference: LiRA beats the loss threshold, DP bounds both, oracles for training.

Data: a 10-cluster Gaussian mixture in 16-D (centres ~ N(0, I), within-cluster noise
0.5); a record's label is its cluster with probability 1/2, else a uniformly random
class. Atypical labels can only be fitted by memorising them, and records differ a lot
in how easy they are, which is what LiRA's per-record calibration exploits (Carlini
et al. 2022). The target MLP (16 -> 128 -> 10) is trained full-batch with
Adam for 200 steps: it fits its members perfectly.

Membership of every candidate is an independent fair coin (not a fixed half), so that a
record's membership is independent of the rest of the training set: then one training
run is a valid DP audit with one trial per record (Steinke, Nasr, Jagielski 2023).

References:
  Yeom et al. 2018, arXiv:1709.01604 (loss threshold).
  Carlini et al. 2022, arXiv:2112.03570 (LiRA, TPR at low FPR).
  Kairouz, Oh, Viswanath 2015, arXiv:1311.0776 ((eps, delta)-DP => TPR <= e^eps FPR + delta).
  Jagielski, Ullman, Oprea 2020, arXiv:2006.07709 (empirical epsilon lower bounds with
  Clopper-Pearson intervals).
  Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run",
  arXiv:2305.08846.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv.attacks.membership import (LiraConfig, client_membership_scores, lira_attack, lira_scores,
                                        loss_threshold_scores, train_shadow_models)
from fedpriv.attacks.shadow_models import (ShadowTrainingConfig, balanced_inclusion_masks, logit_confidence,
                                           logit_confidences, poisson_sample_masks, train_model, train_models)
from fedpriv.defenses import DPSGDPlan
from fedpriv.federated import LocalTrainingConfig, make_client_update
from fedpriv.metrics.roc import auc, roc_curve, tpr_at_fpr
from fedpriv.models import make_model

DIM, CLASSES = 16, 10
NUM_CANDIDATES, NUM_POPULATION = 1000, 200
NUM_SHADOWS = 16
TRAINING = ShadowTrainingConfig(steps=200, learning_rate=1e-2, optimizer="adam")
FPR_LEVELS = (0.001, 0.01)
# DP-SGD: q = 0.1, 100 steps, sigma = 4 -> epsilon ~ 0.98 at delta = 1e-5 (computed below).
DELTA = 1e-5
DP_PLAN = DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=4.0, sampling_rate=0.1, steps=100,
                    expected_batch_size=0.1 * NUM_CANDIDATES / 2)
DP_TRAINING = ShadowTrainingConfig(steps=100, learning_rate=1e-2, optimizer="adam", batch="poisson",
                                   sampling_rate=0.1)
# The audit's thresholds (each the best one at this FPR) and its family-wise confidence.
AUDIT_FPRS = (0.001, 0.01, 0.05, 0.1)
AUDIT_CONFIDENCE = 0.95

MODEL = make_model("mlp", input_shape=(DIM,), num_classes=CLASSES, hidden_sizes=(128,))


def gaussian_mixture(rng: np.random.Generator, n: int):
    centres = np.random.default_rng(123).normal(size=(CLASSES, DIM))
    cluster = rng.integers(CLASSES, size=n)
    x = centres[cluster] + 0.5 * rng.normal(size=(n, DIM))
    y = np.where(rng.random(n) < 0.5, rng.integers(CLASSES, size=n), cluster)
    return x.astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x, y = gaussian_mixture(rng, NUM_CANDIDATES)
    population_x, population_y = gaussian_mixture(rng, NUM_POPULATION)
    is_member = rng.random(NUM_CANDIDATES) < 0.5
    # The target trains on the same [candidates; population] array as the shadows, with
    # the population never included: identical to training on the members alone, and the
    # compiled single-model program is then shared with loop-batched shadows.
    all_x = np.concatenate([x, population_x])
    all_y = np.concatenate([y, population_y])
    target_mask = np.concatenate([is_member, np.zeros(NUM_POPULATION, bool)])
    return dict(x=x, y=y, population_x=population_x, population_y=population_y, is_member=is_member,
                all_x=all_x, all_y=all_y, target_mask=target_mask)


def _attack_numbers(scores, is_member):
    return {"auc": auc(scores, is_member),
            **{f"tpr@{level:g}": float(tpr_at_fpr(scores, is_member, level)) for level in FPR_LEVELS}}


@pytest.fixture(scope="module")
def non_private(data):
    start = time.perf_counter()
    target = train_model(MODEL, jax.random.key(1), data["all_x"], data["all_y"], data["target_mask"], TRAINING)
    config = LiraConfig(num_shadows=NUM_SHADOWS, training=TRAINING)
    result = lira_attack(MODEL, target, data["x"], data["y"], data["population_x"], data["population_y"],
                         config, jax.random.key(2))
    loss = loss_threshold_scores(MODEL, target, data["x"], data["y"])
    seconds = time.perf_counter() - start
    return dict(target=target, result=result, loss=loss, seconds=seconds)


@pytest.fixture(scope="module")
def private(data):
    start = time.perf_counter()
    target = train_model(MODEL, jax.random.key(1), data["all_x"], data["all_y"], data["target_mask"], DP_TRAINING,
                         key=jax.random.key(3), dp_plan=DP_PLAN)
    # The attacker imitates the target's training, DP-SGD included; "loop" batching
    # reuses the target's compiled program (DP per-example gradients compile slowly).
    # Shadows train on ~600 of the 1200 pool records with the target's public divisor
    # (50): a slightly different step size, no effect on anyone's privacy.
    config = LiraConfig(num_shadows=NUM_SHADOWS, training=DP_TRAINING, batching="loop")
    result = lira_attack(MODEL, target, data["x"], data["y"], data["population_x"], data["population_y"],
                         config, jax.random.key(2), dp_plan=DP_PLAN)
    loss = loss_threshold_scores(MODEL, target, data["x"], data["y"])
    seconds = time.perf_counter() - start
    return dict(target=target, result=result, loss=loss, seconds=seconds,
                epsilon=DP_PLAN.report(DELTA).epsilon)


def test_lira_far_above_loss_threshold_on_an_overfit_model(data, non_private):
    is_member = data["is_member"]
    target_predictions = np.argmax(np.asarray(MODEL.apply(non_private["target"], data["x"])), axis=1)
    train_accuracy = np.mean(target_predictions[is_member] == data["y"][is_member])
    lira = _attack_numbers(non_private["result"].scores, is_member)
    loss = _attack_numbers(non_private["loss"], is_member)
    print(f"\nnon-private: train accuracy {train_accuracy:.3f}; LiRA {lira}; loss threshold {loss}; "
          f"{non_private['seconds']:.1f} s (target + {NUM_SHADOWS} shadows + scoring)")
    assert train_accuracy == 1.0  # memorised, random labels included
    assert lira["auc"] > 0.9
    assert loss["auc"] > 0.75  # the loss attack is not useless on average ...
    # ... but at low FPR it is (~500 non-members: 1 % FPR allows 5 false positives; 0.1 %
    # allows none, so that number is "TPR with zero false positives").
    assert lira["tpr@0.01"] >= 0.3
    assert lira["tpr@0.01"] >= 5 * loss["tpr@0.01"]
    assert lira["tpr@0.001"] >= 0.08
    assert lira["tpr@0.001"] >= 3 * max(loss["tpr@0.001"], 1 / is_member.sum())


def test_offline_and_global_variance_variants_also_beat_the_loss_threshold(data, non_private):
    result, is_member = non_private["result"], data["is_member"]
    loss_tpr = tpr_at_fpr(non_private["loss"], is_member, 0.01)
    for variant in ("online", "offline"):
        for variance in ("per_example", "global"):
            scores = lira_scores(result.target_confidences, result.shadow_confidences, result.shadow_inclusion,
                                 variant=variant, variance=variance)
            numbers = _attack_numbers(scores, is_member)
            print(f"\n{variant}/{variance}: {numbers}")
            assert numbers["auc"] > 0.85
            assert numbers["tpr@0.01"] >= 3 * loss_tpr
    # Online uses twice the information of offline (IN and OUT): it must not do worse on AUC.
    online = auc(result.scores, is_member)
    offline = auc(lira_scores(result.target_confidences, result.shadow_confidences, result.shadow_inclusion,
                              variant="offline"), is_member)
    assert online >= offline


def _epsilon_lower_bound(scores, is_member, delta):
    """Largest eps that the audit proves at family-wise confidence AUDIT_CONFIDENCE.

    At each audited threshold: a one-sided Clopper-Pearson LOWER bound on the TPR and
    UPPER bound on the FPR, each at level beta = (1 - confidence) / (2 * thresholds)
    (Bonferroni over both bounds and all thresholds). If the training is (eps, delta)-DP,
    TPR <= e^eps FPR + delta at every threshold, so with probability >= confidence
    every tpr_low <= e^eps * fpr_high + delta, i.e. log((tpr_low - delta) / fpr_high) <= eps.
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    members, non_members = int(is_member.sum()), int((~is_member).sum())
    beta = (1 - AUDIT_CONFIDENCE) / (2 * len(AUDIT_FPRS))
    bounds, rows = [], []
    for level in AUDIT_FPRS:
        point = np.searchsorted(fpr, level, side="right") - 1
        true_positives = round(tpr[point] * members)
        false_positives = round(fpr[point] * non_members)
        tpr_low = stats.beta.ppf(beta, true_positives, members - true_positives + 1) if true_positives else 0.0
        fpr_high = stats.beta.ppf(1 - beta, false_positives + 1, non_members - false_positives)
        bounds.append(math.log((tpr_low - delta) / fpr_high) if tpr_low > delta else -math.inf)
        rows.append((level, tpr[point], fpr[point], tpr_low, fpr_high))
    return max(bounds), rows


@pytest.mark.slow  # its fixture trains 9 s; the scenario-level DP-SGD membership test stays in the default run
def test_dp_target_stays_under_the_dp_bound(data, private, non_private):
    is_member = data["is_member"]
    epsilon = private["epsilon"]
    assert 0.9 < epsilon < 1.1  # q = 0.1, sigma = 4, 100 steps, delta = 1e-5 (PLD accountant)
    lira = _attack_numbers(private["result"].scores, is_member)
    loss = _attack_numbers(private["loss"], is_member)
    print(f"\nDP (eps={epsilon:.3f}, delta={DELTA:g}): LiRA {lira}; loss threshold {loss}; "
          f"{private['seconds']:.1f} s")
    for name, scores in (("lira", private["result"].scores), ("loss", private["loss"])):
        bound, rows = _epsilon_lower_bound(scores, is_member, DELTA)
        for level, tpr, fpr, tpr_low, fpr_high in rows:
            print(f"  {name} @FPR<={level:g}: TPR {tpr:.4f} (CP low {tpr_low:.4f}) at FPR {fpr:.4f} "
                  f"(CP high {fpr_high:.4f}); bound e^eps*FPR_high+delta = "
                  f"{math.exp(epsilon) * fpr_high + DELTA:.4f}")
            assert tpr_low <= math.exp(epsilon) * fpr_high + DELTA
        print(f"  {name}: empirical epsilon lower bound {bound:.3f} <= {epsilon:.3f}")
        assert bound <= epsilon
    # The same audit has the power to refute this epsilon for the non-private target.
    refuted, _ = _epsilon_lower_bound(non_private["result"].scores, is_member, DELTA)
    print(f"  non-private LiRA: empirical epsilon lower bound {refuted:.3f}")
    assert refuted > 2 * epsilon


def test_client_level_membership_aggregates_record_scores(data, non_private):
    # A second target whose members are whole hospitals (50 of 20 records each); the
    # shadows (trained on record-level random halves) serve unchanged.
    rng = np.random.default_rng(7)
    hospital = rng.permutation(np.repeat(np.arange(50), NUM_CANDIDATES // 50))
    hospital_member = rng.permutation(np.arange(50) < 25)
    record_member = hospital_member[hospital]
    mask = np.concatenate([record_member, np.zeros(NUM_POPULATION, bool)])
    target = train_model(MODEL, jax.random.key(11), data["all_x"], data["all_y"], mask, TRAINING)
    result = non_private["result"]
    confidences = logit_confidence(MODEL, target, data["x"], data["y"])
    scores = lira_scores(confidences, result.shadow_confidences, result.shadow_inclusion)
    record_auc = auc(scores, record_member)
    client_auc = {aggregate: auc(client_membership_scores(scores, hospital, num_clients=50, aggregate=aggregate),
                                 hospital_member) for aggregate in ("mean", "sum", "max")}
    loss_client_auc = auc(client_membership_scores(loss_threshold_scores(MODEL, target, data["x"], data["y"]),
                                                   hospital), hospital_member)
    print(f"\nclient level: record AUC {record_auc:.3f}; client AUC {client_auc}; loss mean {loss_client_auc:.3f}")
    assert record_auc > 0.9
    assert client_auc["mean"] == 1.0 and client_auc["sum"] == 1.0
    assert client_auc["max"] > 0.7


def test_client_scores_hand_computed():
    scores = np.array([1.0, 3.0, -2.0, 4.0, 0.5])
    clients = np.array([0, 0, 1, 2, 1])
    np.testing.assert_allclose(client_membership_scores(scores, clients), [2.0, -0.75, 4.0])
    np.testing.assert_allclose(client_membership_scores(scores, clients, aggregate="sum"), [4.0, -1.5, 4.0])
    np.testing.assert_allclose(client_membership_scores(scores, clients, aggregate="max"), [3.0, 0.5, 4.0])


def test_lira_scores_match_hand_computed_gaussians():
    rng = np.random.default_rng(0)
    shadows = rng.normal(size=(8, 5))
    inclusion = np.zeros((8, 5), bool)
    inclusion[:4] = True
    shadows[:4] += 2.0
    target = rng.normal(size=5) + 1.0
    mu_in, sd_in = shadows[:4].mean(0), shadows[:4].std(0, ddof=1)
    mu_out, sd_out = shadows[4:].mean(0), shadows[4:].std(0, ddof=1)
    online = stats.norm.logpdf(target, mu_in, sd_in) - stats.norm.logpdf(target, mu_out, sd_out)
    np.testing.assert_allclose(lira_scores(target, shadows, inclusion), online, rtol=1e-10)
    offline = -stats.norm.logsf(target, mu_out, sd_out)
    np.testing.assert_allclose(lira_scores(target, shadows, inclusion, variant="offline"), offline, rtol=1e-10)
    # Global: within-record variances pooled over records, (sum of squares) / (sum of dof).
    pooled_in = np.sqrt(np.sum((shadows[:4] - mu_in) ** 2) / (5 * 3))
    pooled_out = np.sqrt(np.sum((shadows[4:] - mu_out) ** 2) / (5 * 3))
    expected = stats.norm.logpdf(target, mu_in, pooled_in) - stats.norm.logpdf(target, mu_out, pooled_out)
    np.testing.assert_allclose(lira_scores(target, shadows, inclusion, variance="global"), expected, rtol=1e-10)


def test_logit_confidence_is_log_odds_of_the_true_class_and_stable():
    model = make_model("mlp", input_shape=(3,), num_classes=4, hidden_sizes=())
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    y = np.array([0, 2, 3])
    params = {"head": {"kernel": jnp.array([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 3.0, 0.0], [60.0, 0.0, 0.0, 0.0]]),
                       "bias": jnp.zeros(4)}}
    logits = np.asarray(x, np.float64) @ np.asarray(params["head"]["kernel"], np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p_true = p[np.arange(3), y]
    phi = np.asarray(logit_confidence(model, params, x, y))
    np.testing.assert_allclose(phi[:2], np.log(p_true[:2] / (1 - p_true[:2])), rtol=1e-5)
    # Third record: logits (60, 0, 0, 0) and y = 3, so phi = 0 - logsumexp(60, 0, 0)
    # = -60 - log(1 + 2 e^-60) = -60 in float32. With y = 0 it is the memorised case,
    # p_true = 1 - 3 e^-60 (1 - p rounds to 0 even in float64): phi = 60 - log 3, finite.
    np.testing.assert_allclose(phi[2], -60.0, rtol=1e-7)
    memorised = np.asarray(logit_confidence(model, params, x[2:], np.array([0])))[0]
    np.testing.assert_allclose(memorised, 60.0 - np.log(3.0), rtol=1e-6)
    stacked = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf, 2 * leaf]), params)
    both = np.asarray(logit_confidences(model, stacked, x, y))
    np.testing.assert_allclose(both[0], phi, rtol=1e-6)


def test_balanced_inclusion_masks():
    masks = balanced_inclusion_masks(jax.random.key(0), 16, 3000)
    assert masks.shape == (16, 3000) and masks.dtype == bool
    np.testing.assert_array_equal(masks.sum(axis=0), 8)  # every record IN exactly half
    assert np.all(np.abs(masks.sum(axis=1) - 1500) < 4 * math.sqrt(3000 / 4))  # each shadow ~ half
    assert len({row.tobytes() for row in masks}) == 16


# ---------------------------------------------------------------------------------------
# Training oracles: vmapped shadows == a loop of single models; == the federated client.

SMALL = make_model("mlp", input_shape=(4,), num_classes=3, hidden_sizes=(8,))


def _small_data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, size=n).astype(np.int32)


@pytest.mark.parametrize("config,plan", [
    (ShadowTrainingConfig(steps=20, learning_rate=0.05, optimizer="adam"), None),
    (ShadowTrainingConfig(steps=8, learning_rate=0.5, optimizer="sgd", batch="poisson", sampling_rate=0.3),
     DPSGDPlan(l2_clip_norm=0.5, noise_multiplier=1.0, sampling_rate=0.3, steps=8, expected_batch_size=6.0)),
], ids=["full-adam", "dp-sgd"])
def test_vmapped_shadows_equal_a_python_loop_of_single_models(config, plan):
    x, y = _small_data()
    inclusion = balanced_inclusion_masks(jax.random.key(4), 3, x.shape[0])
    init_keys = jax.random.split(jax.random.key(5), 3)
    keys = jax.random.split(jax.random.key(6), 3)
    vmapped = train_models(SMALL, init_keys, x, y, inclusion, config, keys=keys, dp_plan=plan)
    for m in range(3):
        single = train_model(SMALL, init_keys[m], x, y, inclusion[m], config, key=keys[m], dp_plan=plan)
        jax.tree_util.tree_map(lambda v, s: np.testing.assert_allclose(v[m], s, rtol=1e-5, atol=1e-6),
                               vmapped, single)
    looped = train_models(SMALL, init_keys, x, y, inclusion, config, keys=keys, dp_plan=plan, batching="loop")
    jax.tree_util.tree_map(lambda v, s: np.testing.assert_allclose(v, s, rtol=1e-5, atol=1e-6), vmapped, looped)
    # The shadows differ from each other and from their inits: nothing was shared or skipped.
    kernels = np.asarray(vmapped["dense_0"]["kernel"])
    assert not np.allclose(kernels[0], kernels[1])
    init = SMALL.init(init_keys[0], x[:1])
    assert not np.allclose(kernels[0], np.asarray(init["dense_0"]["kernel"]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dp_training_equals_the_federated_client_function(optimizer):
    """train_model(dp_plan) == make_client_update(dp_plan) on the same Poisson batches and noise key."""
    x, y = _small_data(n=24, seed=2)
    members = np.arange(24) % 3 != 0
    plan = DPSGDPlan(l2_clip_norm=0.7, noise_multiplier=1.2, sampling_rate=0.4, steps=6, expected_batch_size=6.4)
    config = ShadowTrainingConfig(steps=6, learning_rate=0.1, optimizer=optimizer, batch="poisson",
                                  sampling_rate=0.4)
    init_key, key = jax.random.key(8), jax.random.key(9)
    trained = train_model(SMALL, init_key, x, y, members, config, key=key, dp_plan=plan)

    sampling_key, noise_key = jax.random.split(key)
    masks = poisson_sample_masks(sampling_key, 6, members, 0.4)
    assert float(jnp.max(jnp.where(members, 0.0, masks))) == 0.0  # non-members never sampled
    client = make_client_update(SMALL, LocalTrainingConfig(learning_rate=0.1, optimizer=optimizer,
                                                           step_loop="scan"), plan)
    examples = {"x": jnp.broadcast_to(x, (6, *x.shape)), "y": jnp.broadcast_to(y, (6, *y.shape))}
    params = SMALL.init(init_key, x[:1])
    update, _ = jax.jit(client)(params, examples, masks, noise_key)
    jax.tree_util.tree_map(lambda t, p, u: np.testing.assert_allclose(t, p + u, rtol=1e-5, atol=1e-6),
                           trained, params, update)


def test_full_batch_training_equals_the_federated_client_function():
    x, y = _small_data(n=30, seed=3)
    members = np.arange(30) < 17
    config = ShadowTrainingConfig(steps=5, learning_rate=0.3, optimizer="sgd")
    trained = train_model(SMALL, jax.random.key(1), x, y, members, config)
    client = make_client_update(SMALL, LocalTrainingConfig(learning_rate=0.3))
    params = SMALL.init(jax.random.key(1), x[:1])
    mask = jnp.broadcast_to(jnp.asarray(members, jnp.float32), (5, 30))
    update, _ = jax.jit(client)(params, {"x": jnp.broadcast_to(x, (5, 30, 4)), "y": jnp.broadcast_to(y, (5, 30))},
                                mask, jax.random.key(0))
    jax.tree_util.tree_map(lambda t, p, u: np.testing.assert_allclose(t, p + u, rtol=1e-5, atol=1e-6),
                           trained, params, update)


# ---------------------------------------------------------------------------------------
# Bad input: ValueError naming the field, before any training.


@pytest.mark.parametrize("kwargs,field", [
    (dict(steps=0, learning_rate=0.1), "steps"),
    (dict(steps=1.5, learning_rate=0.1), "steps"),
    (dict(steps=10, learning_rate=-1.0), "learning_rate"),
    (dict(steps=10, learning_rate=float("inf")), "learning_rate"),
    (dict(steps=10, learning_rate=0.1, optimizer="rmsprop"), "optimizer"),
    (dict(steps=10, learning_rate=0.1, batch="mini"), "batch"),
    (dict(steps=10, learning_rate=0.1, batch="poisson"), "sampling_rate"),
    (dict(steps=10, learning_rate=0.1, batch="poisson", sampling_rate=1.5), "sampling_rate"),
    (dict(steps=10, learning_rate=0.1, sampling_rate=0.5), "sampling_rate"),
])
def test_training_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShadowTrainingConfig(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_shadows=0), "num_shadows"),
    (dict(num_shadows=2), "num_shadows"),  # online needs >= 2 IN and >= 2 OUT
    (dict(num_shadows=5), "even"),
    (dict(num_shadows=2, variant="offline"), "num_shadows"),
    (dict(num_shadows=True), "num_shadows"),
    (dict(num_shadows=4, variant="shadow"), "variant"),
    (dict(num_shadows=4, variance="fixed"), "variance"),
    (dict(num_shadows=4, batching="pmap"), "batching"),
    (dict(num_shadows=4, training="adam"), "training"),
])
def test_lira_config_names_the_bad_field(kwargs, field):
    kwargs.setdefault("training", TRAINING)
    with pytest.raises(ValueError, match=field):
        LiraConfig(**kwargs)


def test_odd_shadows_allowed_offline():
    assert LiraConfig(num_shadows=5, training=TRAINING, variant="offline").num_shadows == 5


def test_attack_inputs_are_checked_before_training():
    x, y = _small_data()
    config = LiraConfig(num_shadows=4, training=ShadowTrainingConfig(steps=2, learning_rate=0.1))
    params = SMALL.init(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match="candidate_y"):
        lira_attack(SMALL, params, x, y[:-1], x, y, config, jax.random.key(0))
    with pytest.raises(ValueError, match="population_y"):
        lira_attack(SMALL, params, x, y, x, y[:3], config, jax.random.key(0))
    with pytest.raises(ValueError, match="population_x"):
        lira_attack(SMALL, params, x, y, x[:, :2], y, config, jax.random.key(0))
    with pytest.raises(ValueError, match="candidate_y"):
        lira_attack(SMALL, params, x, y + 3, x, y, config, jax.random.key(0))  # label out of range
    with pytest.raises(ValueError, match="config"):
        train_shadow_models(SMALL, x, y, config.training, jax.random.key(0))
    with pytest.raises(ValueError, match="y"):
        loss_threshold_scores(SMALL, params, x, y[:5])


def test_training_inputs_are_checked():
    x, y = _small_data()
    config = ShadowTrainingConfig(steps=2, learning_rate=0.1)
    inclusion = np.ones((3, x.shape[0]), bool)
    with pytest.raises(ValueError, match="init_keys"):
        train_models(SMALL, jax.random.split(jax.random.key(0), 2), x, y, inclusion, config)
    with pytest.raises(ValueError, match="inclusion_mask"):
        train_models(SMALL, jax.random.split(jax.random.key(0), 3), x, y, inclusion[:, :-1], config)
    with pytest.raises(ValueError, match="inclusion_mask"):
        train_models(SMALL, jax.random.split(jax.random.key(0), 0), x, y, inclusion[:0], config)
    with pytest.raises(ValueError, match="batching"):
        train_models(SMALL, jax.random.split(jax.random.key(0), 3), x, y, inclusion, config, batching="pmap")
    poisson = ShadowTrainingConfig(steps=2, learning_rate=0.1, batch="poisson", sampling_rate=0.5)
    with pytest.raises(ValueError, match="key"):
        train_model(SMALL, jax.random.key(0), x, y, inclusion[0], poisson)
    plan = DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5, steps=2, expected_batch_size=20.0)
    with pytest.raises(ValueError, match="batch"):
        train_model(SMALL, jax.random.key(0), x, y, inclusion[0], config, key=jax.random.key(1), dp_plan=plan)
    with pytest.raises(ValueError, match="steps"):
        train_model(SMALL, jax.random.key(0), x, y, inclusion[0],
                    ShadowTrainingConfig(steps=3, learning_rate=0.1, batch="poisson", sampling_rate=0.5),
                    key=jax.random.key(1), dp_plan=plan)
    with pytest.raises(ValueError, match="sampling_rate"):
        train_model(SMALL, jax.random.key(0), x, y, inclusion[0],
                    ShadowTrainingConfig(steps=2, learning_rate=0.1, batch="poisson", sampling_rate=0.4),
                    key=jax.random.key(1), dp_plan=plan)
    with pytest.raises(ValueError, match="num_models"):
        balanced_inclusion_masks(jax.random.key(0), 0, 10)


def test_score_inputs_are_checked():
    target, shadows = np.zeros(5), np.zeros((4, 5))
    inclusion = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    with pytest.raises(ValueError, match="shadow_inclusion"):
        lira_scores(target, shadows, inclusion[:, :4])
    with pytest.raises(ValueError, match="shadow_confidences"):
        lira_scores(target, shadows[:, :4], inclusion)
    with pytest.raises(ValueError, match="shadow_confidences"):
        lira_scores(target, np.full((4, 5), np.nan), inclusion)
    lopsided = inclusion.copy()
    lopsided[1, 3] = False  # record 3: 1 IN shadow
    with pytest.raises(ValueError, match="shadow_inclusion"):
        lira_scores(target, shadows, lopsided)
    assert np.all(np.isfinite(lira_scores(target, shadows, lopsided, variant="offline")))  # 3 OUT: fine
    with pytest.raises(ValueError, match="variant"):
        lira_scores(target, shadows, inclusion, variant="both")
    with pytest.raises(ValueError, match="record_clients"):
        client_membership_scores(np.zeros(4), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="record_clients"):
        client_membership_scores(np.zeros(3), np.array([0, 2, 2]))  # client 1 has no record
    with pytest.raises(ValueError, match="num_clients"):
        client_membership_scores(np.zeros(3), np.array([0, 1, 2]), num_clients=2)
    with pytest.raises(ValueError, match="aggregate"):
        client_membership_scores(np.zeros(3), np.array([0, 1, 2]), aggregate="median")
