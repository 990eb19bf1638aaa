"""The scenario's measurements besides the attack: defense costs, membership inference
and the white-box canary audit of the run's DP plan (part of the scenario: they read the
ground truth or the plan, never an attack's view)."""

from __future__ import annotations

import time

import jax
import numpy as np

from fedpriv import metrics
from fedpriv import privacy
from fedpriv.attacks import LiraConfig, lira_attack, loss_threshold_scores
from fedpriv.defenses import DPFedAvgPlan, DPSGDPlan
from fedpriv.federated.defense_stack import DefenseStack
from fedpriv.typing import Model


def defense_costs(stack: DefenseStack, training, params) -> dict:
    """What the defenses cost per client and round, and what they screened out."""
    plaintext = float(sum(4 * np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
    message = stack.message_bytes(params)
    protocol_bytes = [float(report["protocol"]["bytes_per_client"]) for report in training.round_reports
                      if "protocol" in report]
    costs = {"defense.name": stack.name, "cost.plaintext_bytes_per_client": plaintext,
             "cost.bytes_per_client": float(np.mean(protocol_bytes)) if protocol_bytes else message}
    for name in ("num_dropped_nonfinite", "num_dropped_oversized", "num_screened_out"):
        counts = [int(report[name]) for report in training.round_reports if name in report]
        if counts:
            costs[f"defense.{name}"] = int(np.sum(counts))
    return costs


def membership_inference(config: LiraConfig, model: Model, params, train_cohort, test_cohort, hospital: np.ndarray,
                         key: jax.Array) -> dict:
    """LiRA and the loss-threshold baseline on one hospital's records against the federated model.

    Candidates: the hospital's training records (members) and the same number of
    held-out test records (non-members), shuffled; the attacker never sees which is which.
    """
    started = time.perf_counter()
    count = min(len(hospital), test_cohort.num_records)
    order = np.asarray(jax.random.permutation(key, 2 * count))
    x = np.concatenate([train_cohort.images[hospital[:count]], test_cohort.images[:count]])[order]
    y = np.concatenate([train_cohort.labels[hospital[:count]], test_cohort.labels[:count]])[order]
    is_member = (np.arange(2 * count) < count)[order]
    empty_x, empty_y = x[:0], y[:0]
    lira = lira_attack(model, params, x, y, empty_x, empty_y, config, jax.random.fold_in(key, 1))
    loss = loss_threshold_scores(model, params, x, y)
    results = {"membership.candidates": int(2 * count), "membership.shadows": config.num_shadows}
    for name, scores in (("lira", lira.scores), ("loss", loss)):
        results[f"membership.{name}.auc"] = metrics.auc(scores, is_member)
        for fpr in (0.001, 0.01):
            results[f"membership.{name}.tpr_at_fpr_{fpr:g}"] = float(metrics.tpr_at_fpr(scores, is_member, fpr))
        # The same scores as an empirical epsilon lower bound (one run, independent members),
        # when the split halves are large enough to certify anything at all.
        if privacy.max_certifiable_epsilon(num_present=count // 2, num_absent=count // 2) > 0:
            audit = privacy.clopper_pearson_audit(scores[is_member], scores[~is_member], threshold_selection="split")
            results[f"membership.{name}.epsilon_lower_bound"] = audit.epsilon_lower_bound
    results["membership.seconds"] = time.perf_counter() - started
    return results


def audit_one_step(plan, trials: int, delta: float, key: jax.Array, params) -> dict:
    """White-box canary audit of one release of ``plan``'s code at its weakest round.

    Runs the plan's own ``private_gradient`` (clip, noise on the sum) with and without a
    canary of norm ``l2_clip_norm`` in a model-sized parameter space — a canary example
    for DP-SGD, a canary client update for DP-FedAvg — and states the Clopper-Pearson
    lower bound (95 %, split threshold) beside the accountant's epsilon for that one
    release (q = 1): a lower bound above it means the noise code does not do what the
    plan accounts for.
    """
    if isinstance(plan, DPFedAvgPlan):
        weakest = min(plan.noise_multiplier_in_round(r) for r in range(plan.rounds))
        one_step = DPFedAvgPlan(l2_clip_norm=plan.l2_clip_norm, noise_multiplier=weakest, client_sampling_rate=1.0,
                                rounds=1, expected_clients_per_round=plan.expected_clients_per_round)
    else:
        weakest = min(plan.noise_multiplier_in_round(r) for r in range(plan.steps // plan.steps_per_round))
        one_step = DPSGDPlan(l2_clip_norm=plan.l2_clip_norm, noise_multiplier=weakest, sampling_rate=1.0, steps=1,
                             expected_batch_size=plan.expected_batch_size)
    canary_trials = privacy.run_gradient_canary_trials(one_step, trials, key, params_template=params)
    result = privacy.clopper_pearson_audit(canary_trials.present_scores, canary_trials.absent_scores, delta=delta,
                                           threshold_selection="split")
    accountant_epsilon = one_step.report(delta).epsilon if weakest > 0 else float("inf")
    return privacy.audit_report(result, accountant_epsilon)
