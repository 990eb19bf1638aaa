"""Attacks end to end through the scenario, beyond the presets' smoke checks."""

import pytest

from tests.experiments.conftest import run_smoke


@pytest.mark.slow  # 11 s; label counts are unit-tested in tests/attacks
def test_label_counts_feed_inverting_gradients_at_batch_four():
    # iLRG-style counts (Ma et al. 2023) are exact for an untrained MLP at batch 4.
    metrics = run_smoke({"algorithm.batch_size": "4", "attack.config.label_strategy": "counts"}).metrics
    assert metrics["attack.label_count_exact"] == 1.0


@pytest.mark.slow  # 14 s; the analytic attack is unit-tested in tests/attacks
def test_analytic_attack_gives_most_of_a_batch_back_exactly():
    metrics = run_smoke({"attack": "analytic", "algorithm.batch_size": "4"}).metrics
    assert metrics["attack.exact_recovery_rate"] >= 0.75 and metrics["attack.psnr_db_best"] == 100.0

