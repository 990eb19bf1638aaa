"""Membership inference on a hospital's own records against the federated model (attack=lira)."""

import json

import pytest

from tests.experiments.conftest import run_smoke


@pytest.mark.slow  # the coin split is also checked by the audited runs below
def test_members_and_non_members_are_the_target_hospitals_records_split_by_coins():
    result = run_smoke({"attack": "lira", "attack.membership.num_shadows": "4",
                        "attack.membership.training.steps": "20"})
    metrics = result.metrics
    # Every record of hospital 0 was kept (member) or held out before training (non-member) by a coin.
    scored, members = metrics["membership.records_scored"], metrics["membership.members"]
    assert 2 <= members <= scored - 2
    assert metrics["data.smallest_hospital"] <= members  # the trained hospital 0 holds only the members
    for name in ("lira", "loss"):
        assert 0.0 <= metrics[f"membership.{name}.auc_low"] <= metrics[f"membership.{name}.auc"] \
            <= metrics[f"membership.{name}.auc_high"] <= 1.0
        assert 0.0 <= metrics[f"membership.{name}.tpr_at_fpr_0.01"] <= 1.0
    assert metrics["membership.shadows"] == 4
    assert result.truth is None  # no reconstruction attack in this option


# Hospital 0 holds about 50 records here: enough for the one-run audit to certify up to
# epsilon ~1.05 when every one of its 2 x 5 guesses is right (delta 1e-5).
AUDITABLE = {"attack": "lira", "attack.membership.num_shadows": "4", "attack.membership.training.steps": "20",
             "data.cohort.num_records": "128"}


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])  # a second seed: `-m slow`
def test_the_one_run_lower_bound_of_a_dp_sgd_run_at_epsilon_one_stays_below_one(seed):
    metrics = run_smoke({**AUDITABLE, "defense": "dp_sgd", "privacy.target_epsilon": "1.0",
                         "seed": str(seed)}).metrics
    assert metrics["membership.accountant_epsilon"] <= 1.0 + 1e-6
    for name in ("lira", "loss"):
        assert f"membership.{name}.epsilon_lower_bound" in metrics  # certifiable, so stated
        assert metrics[f"membership.{name}.epsilon_lower_bound"] <= metrics["membership.accountant_epsilon"]


# 100 rounds of 8 local Adam steps on ~40 members: the model memorises them (measured: loss
# AUC 0.77, 95 % interval [0.67, 0.87], over 80 scored records, seed 0).
MEMORISING = {"algorithm": "fedavg", "algorithm.rounds": "100", "algorithm.local_steps": "8",
              "algorithm.local.learning_rate": "0.003", "data.cohort.num_records": "256",
              "data.partition.scheme": "iid"}


@pytest.mark.slow  # 18 s; LiRA's power on a memorising model is unit-tested in tests/attacks/test_membership.py
def test_a_non_private_run_that_memorises_shows_membership_with_an_interval_above_one_half():
    metrics = run_smoke({**AUDITABLE, **MEMORISING}).metrics
    assert metrics["membership.records_scored"] >= 60
    assert metrics["membership.loss.auc_low"] > 0.5, metrics["membership.loss.auc"]
