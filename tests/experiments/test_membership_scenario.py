"""Membership inference on a hospital's records against the federated model (attack=lira)."""

from tests.experiments.conftest import run_smoke


def test_lira_scores_hospital_records_against_the_federated_model():
    result = run_smoke({"attack": "lira", "attack.membership.num_shadows": "4",
                        "attack.membership.training.steps": "20"})
    metrics = result.metrics
    # Hospital 0's records against as many held-out records: balanced candidates.
    candidates = metrics["membership.candidates"]
    assert candidates % 2 == 0 and 0 < candidates <= 2 * metrics["data.num_test_records"]
    assert candidates >= 2 * min(metrics["data.smallest_hospital"], metrics["data.num_test_records"])
    for name in ("lira", "loss"):
        assert 0.0 <= metrics[f"membership.{name}.auc"] <= 1.0
        assert 0.0 <= metrics[f"membership.{name}.tpr_at_fpr_0.01"] <= 1.0
    assert metrics["membership.shadows"] == 4
    assert result.truth is None  # no reconstruction attack in this option
