"""Defenses end to end through the scenario: what each changes for the attacker, and its cost."""

import pytest

from tests.experiments.conftest import run_smoke

# iid hospitals: the by_site scanner shift moves the hospitals' intensities away from the
# public phantoms the bin edges come from, and records then crowd into the edge bins.
IMPRINT = {"attack": "imprint", "algorithm.batch_size": "4", "attack.config.bins": "64",
           "attack.public_records": "1024", "data.partition.scheme": "iid"}


@pytest.mark.slow  # two imprint runs; the preset smoke run and tests/attacks/test_imprint.py cover the attack
def test_imprint_recovers_records_exactly_and_through_secure_aggregation():
    plain = run_smoke(IMPRINT).metrics
    assert plain["attack.records_scored"] == 8
    assert plain["attack.exact_recovery_rate"] >= 0.75  # 8 records in 64 bins: most sit alone
    secure = run_smoke({**IMPRINT, "defense": "secure_aggregation"}).metrics
    assert secure["attack.exact_recovery_rate"] > 0.25  # the sum still gives lone records back
    assert secure["cost.bytes_per_client"] > secure["cost.plaintext_bytes_per_client"]


@pytest.mark.slow  # the same refusal is checked under secure aggregation in the default run
def test_client_side_screening_refuses_the_imprint_model_and_nothing_leaks():
    metrics = run_smoke({**IMPRINT, "defense": "model_screening"}).metrics
    assert metrics["defense.models_refused"] >= 2  # every hospital, every round
    assert "imprint" in metrics["defense.first_refusal"]
    assert metrics["attack.records_scored"] == 0 and metrics["attack.exact_recovery_rate"] == 0.0


def test_screening_under_secure_aggregation_refuses_the_imprint_and_the_empty_aggregate_leaks_nothing():
    screen = ("{_target_:fedpriv.defenses.model_screening.ModelScreeningConfig,duplicate_cosine:0.999,"
              "max_duplicate_fraction:0.05,norm_z_threshold:8.0,change_z_threshold:6.0}")
    metrics = run_smoke({**IMPRINT, "defense": "secure_aggregation", "defense.model_screening": screen}).metrics
    assert metrics["defense.models_refused"] >= 2
    assert "imprint" in metrics["defense.first_refusal"]
    assert metrics["attack.status"].startswith("no hospital sent an update")
    assert metrics["attack.records_scored"] == 0


def test_client_screening_accepts_an_honest_model():
    metrics = run_smoke({"defense": "model_screening", "attack": "none"}).metrics
    assert metrics["defense.models_refused"] == 0


@pytest.mark.slow  # the audit itself is tested in tests/defenses/test_dp_fedavg.py
def test_dp_fedavg_reports_client_level_epsilon_and_its_audit_stays_below_it():
    metrics = run_smoke({"defense": "dp_fedavg", "attack": "none", "privacy.audit_trials": "1000",
                         "privacy.target_epsilon": "3"}).metrics
    assert metrics["privacy.unit"] == "client"
    assert 0.99 * 3 <= metrics["privacy.epsilon_rdp"] <= 3.0
    assert 0.0 <= metrics["audit.epsilon_lower_bound"] <= metrics["audit.accountant_epsilon"]


@pytest.mark.slow  # 10 s; partitioning is unit-tested in tests/federated
def test_partitioned_model_is_attacked_without_its_private_head():
    metrics = run_smoke({"defense": "partitioning", "attack.config.label_strategy": "known"}).metrics
    assert metrics["attack.records_scored"] >= 1
    assert 0 < metrics["attack.psnr_db"] < 100


@pytest.mark.parametrize("defense", ["top_k", "quantization"])
def test_compression_sends_fewer_bytes(defense):
    metrics = run_smoke({"defense": defense, "attack": "none"}).metrics
    assert metrics["cost.bytes_per_client"] < 0.5 * metrics["cost.plaintext_bytes_per_client"]


@pytest.mark.slow  # 20 s; Poisson batches are unit-tested in tests/data and audited in tests/federated/test_round_audit.py
def test_known_labels_under_poisson_sampling_follow_the_protocol_batch():
    # DP-SGD pads Poisson batches to a capacity above the protocol's batch size; the
    # attacker's side knowledge is the victim's real labels at the protocol's batch size.
    metrics = run_smoke({"defense": "dp_sgd", "attack.config.label_strategy": "known"}).metrics
    assert "attack.records_scored" in metrics and metrics["attack.round"] == 0


def test_a_hundred_secure_aggregation_rounds_with_dropouts_finish_and_count_the_aborted_ones():
    # The README's example. 4 hospitals, t = 3: a round aborts when 2 or more drop
    # (probability 0.18 at dropout_rate 0.2), otherwise Shamir recovery unmasks the sum.
    metrics = run_smoke({"defense": "secure_aggregation", "defense.protocol.dropout_rate": "0.2",
                         "algorithm.rounds": "100", "data.partition.num_clients": "4", "attack": "none",
                         "model.hidden_sizes": "[8]"}).metrics
    assert metrics["train.rounds_run"] == 100 and metrics["train.stop_reason"] == ""
    assert 3 <= metrics["defense.rounds_aborted"] <= 40  # binomial(100, 0.18): 4.7 sd either side
    assert metrics["utility.test_accuracy"] > 0.0
