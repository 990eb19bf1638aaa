"""The scenario's measurements besides the attack: utility and timings, what the defenses cost,
the privacy the plan guarantees (its report, the audit log, a white-box canary audit) and
membership inference. Part of the scenario: they read the ground truth or the plan, never
an attack's view."""

from __future__ import annotations

import time

import jax
import numpy as np

from fedpriv import metrics
from fedpriv import privacy
from fedpriv.attacks import LiraConfig, lira_attack, loss_threshold_scores
from fedpriv.privacy.auditing_one_run import one_run_audit, one_run_epsilon_lower_bound
from fedpriv.typing import Model

# The one-run audit guesses "member" for the highest scores and "non-member" for the lowest;
# the counts are fixed before any score is seen (choosing them afterwards is a multiple comparison).
ONE_RUN_GUESS_FRACTION = 0.1
TPR_AT_FPR = (0.001, 0.01)


def training_metrics(trained, cohorts, model: Model) -> dict:
    """Utility (each hospital's model on the test set, averaged under partitioning), time, data sizes,
    and for a checkpointed run what its checkpoints cost and where it resumed."""
    training, partitioned = trained.training, trained.federation.config.private_head
    clients = range(len(cohorts.partition)) if partitioned else [0]
    accuracies = [metrics.accuracy(model, training.hospital_params(model, client), cohorts.test.images,
                                   cohorts.test.labels) for client in clients]
    checkpointed = {}
    if training.checkpoint_seconds or training.resumed_from_round is not None:
        checkpointed = {"checkpoint.seconds": float(np.sum(training.checkpoint_seconds)),
                        "checkpoint.written": len(training.checkpoint_seconds),
                        "checkpoint.resumed_from_round": training.resumed_from_round}
    return {**checkpointed,
        "utility.test_accuracy": float(np.mean(accuracies)),
        "train.seconds": float(np.sum(training.seconds_per_round)),
        "train.seconds_per_round": float(np.median(training.seconds_per_round)) if training.seconds_per_round else 0.0,
        "train.rounds_run": training.rounds_run,
        "train.stop_reason": training.stop_reason,
        "data.num_train_records": int(cohorts.train.num_records),
        "data.num_test_records": int(cohorts.test.num_records),
        "data.smallest_hospital": int(cohorts.sizes.min()),
        "data.largest_hospital": int(cohorts.sizes.max()),
        "model.num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(trained.initial_params))),
    }


def defense_costs(stack, trained) -> dict:
    """What the defenses cost per client and round, and what they dropped, screened or aborted."""
    params, stats = trained.initial_params, trained.training.round_stats
    plaintext = float(sum(4 * np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
    protocol_bytes = [float(round_stats["protocol"]["bytes_per_client"]) for round_stats in stats
                      if "protocol" in round_stats]
    costs = {"defense.name": stack.name, "cost.plaintext_bytes_per_client": plaintext,
             "cost.bytes_per_client": float(np.mean(protocol_bytes)) if protocol_bytes else stack.message_bytes(params),
             "defense.rounds_aborted": int(trained.training.rounds_aborted)}
    for name in ("num_dropped_nonfinite", "num_dropped_oversized", "num_screened_out"):
        counts = [int(round_stats[name]) for round_stats in stats if name in round_stats]
        if counts:
            costs[f"defense.{name}"] = int(np.sum(counts))
    if trained.screens is not None:
        refusals = trained.screens.refusals
        costs["defense.models_refused"] = len(refusals)
        costs["defense.first_refusal"] = "; ".join(refusals[0][2]) if refusals else ""
    return costs


def privacy_metrics(plan, trained, options, key: jax.Array) -> dict:
    """The plan's guarantee (or what a stop-on-budget ledger spent), how the noise was drawn,
    the audit log's verification and the white-box canary audit of one release."""
    results = plan.report(trained.ledger.spent() if trained.ledger is not None else None)
    results["privacy.randomness"] = ("os_entropy" if options.secure_randomness
                                     else "seed_derived (a simulation: the guarantee assumes the seed is secret)")
    if trained.recorder is not None:
        results.update(trained.recorder.verify())
    if options.audit_trials:
        for index, (name, mechanism) in enumerate(plan.audit_mechanisms().items()):
            prefix = "audit" if index == 0 else f"audit.{name}"
            report = audit_one_release(mechanism, options.audit_trials, options.delta,
                                       jax.random.fold_in(key, index), trained.initial_params)
            results.update({key_.replace("audit", prefix, 1): value for key_, value in report.items()})
    return results


def audit_one_release(mechanism, trials: int, delta: float, key: jax.Array, params) -> dict:
    """White-box canary audit of one release of ``mechanism`` (a plan's ``audit_mechanisms``).

    Runs the mechanism's own ``private_gradient`` (clip, noise on the sum) with and without
    a canary of norm ``l2_clip_norm`` in a model-sized parameter space and states the
    Clopper-Pearson lower bound (95 %, split threshold) beside the accountant's epsilon of
    that one release: a lower bound above it means the noise code does not do what the
    plan accounts for. The whole round is audited by :func:`fedpriv.federated.audit_round`.
    """
    canary_trials = privacy.run_gradient_canary_trials(mechanism, trials, key, params_template=params)
    result = privacy.clopper_pearson_audit(canary_trials.present_scores, canary_trials.absent_scores, delta=delta,
                                           threshold_selection="split")
    accountant_epsilon = mechanism.report(delta).epsilon if mechanism.noise_multiplier > 0 else float("inf")
    return privacy.audit_report(result, accountant_epsilon)


def membership_metrics(config: LiraConfig, model: Model, params, cohorts, key: jax.Array, *, delta: float,
                       accountant_epsilon: float) -> dict:
    """LiRA and the loss threshold against the final model, on the target hospital's records.

    Members and non-members are the target hospital's own records split by fair coins
    before training (:class:`fedpriv.scenario_federation.MembershipSplit`), so the scores
    separate membership, not hospitals or domains. Reported per attack: AUC with DeLong's
    95 % interval, TPR at FPR 0.1 % and 1 % (read them with ``membership.records_scored``:
    a TPR at an FPR below one over the non-members is a single record), and an epsilon
    lower bound from ONE training run (Steinke, Nasr, Jagielski 2023, arXiv 2305.08846) at
    the accountant's delta, valid because the coins are independent and fair and the guess
    counts are fixed in advance; omitted when the records are too few to certify anything.
    """
    started = time.perf_counter()
    split = cohorts.membership
    x, y = cohorts.train.images[split.records], cohorts.train.labels[split.records]
    lira = lira_attack(model, params, x, y, x[:0], y[:0], config, key)
    count = split.records.size
    guesses = max(1, int(round(ONE_RUN_GUESS_FRACTION * count)))
    certifiable = one_run_epsilon_lower_bound(num_canaries=count, num_guesses=2 * guesses,
                                              num_correct=2 * guesses, delta=delta) > 0
    results = {"membership.records_scored": int(count), "membership.members": int(split.included.sum()),
               "membership.shadows": config.num_shadows, "membership.accountant_epsilon": accountant_epsilon,
               "membership.delta": delta}
    for name, scores in (("lira", lira.scores), ("loss", loss_threshold_scores(model, params, x, y))):
        results[f"membership.{name}.auc"] = metrics.auc(scores, split.included)
        low, high = metrics.auc_confidence_interval(scores, split.included)
        results[f"membership.{name}.auc_low"], results[f"membership.{name}.auc_high"] = low, high
        for fpr in TPR_AT_FPR:
            results[f"membership.{name}.tpr_at_fpr_{fpr:g}"] = float(metrics.tpr_at_fpr(scores, split.included, fpr))
        if certifiable:
            audit = one_run_audit(scores, split.included, num_positive_guesses=guesses,
                                  num_negative_guesses=guesses, delta=delta)
            results[f"membership.{name}.epsilon_lower_bound"] = audit.epsilon_lower_bound
    results["membership.seconds"] = time.perf_counter() - started
    return results
