"""Prints the privacy numbers a reviewer asks for, side by side in one run.

    python scripts/privacy_report.py            # about a minute on 2 cores
    python scripts/privacy_report.py --trials 1000

1. Epsilon (RDP and PLD, delta 1e-5) of DP-SGD on the default experiment (400 FedSGD
   rounds, Poisson rate 1/75, calibrated to epsilon 8 under RDP) and of a cross-silo
   DP-FedAvg setting (10 hospitals every round, sigma 2, 100 rounds).
2. White-box canary audits of one DP-SGD release (q = 1, clip 1) at sigma 0, 0.5, 1, 2:
   the Clopper-Pearson, Gaussian-DP and one-run lower bounds beside the accountant's
   epsilon, and the same audit of a plan that claims sigma 1 but adds a quarter of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedpriv import privacy  # noqa: E402
from fedpriv.defenses import DPFedAvgPlan, DPSGDPlan  # noqa: E402
from fedpriv.privacy.canaries import MisreportedMechanism, run_gradient_canary_trials  # noqa: E402

DELTA = 1e-5


def accounting_rows():
    default = DPSGDPlan.calibrated(target_epsilon=8.0, delta=DELTA, l2_clip_norm=1.0, sampling_rate=1 / 75,
                                   steps=400, expected_batch_size=1.0)
    cross_silo = DPFedAvgPlan(l2_clip_norm=1.0, noise_multiplier=2.0, client_sampling_rate=1.0, rounds=100,
                              expected_clients_per_round=10)
    for name, plan in (("default experiment, DP-SGD (example)", default),
                       ("cross-silo DP-FedAvg, 10 hospitals (client)", cross_silo)):
        report = plan.report(DELTA)
        yield (f"{name}: sigma {report.noise_multiplier:.4f}, q {report.sampling_rate:.4g}, {report.steps} steps",
               f"RDP {report.epsilon_rdp:.4f}", f"PLD {report.epsilon_pld:.4f}")


def audit_rows(trials: int, key):
    cap = privacy.max_certifiable_epsilon(num_present=trials // 2, num_absent=trials // 2, delta=0.0)
    yield (f"audit cap with {trials} trials per side (split threshold halves them)", f"{cap:.3f}", "")
    mechanisms = [(f"sigma {sigma}", DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=sigma, sampling_rate=1.0,
                                               steps=1, expected_batch_size=1.0)) for sigma in (0.0, 0.5, 1.0, 2.0)]
    claimed = DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=1.0, sampling_rate=1.0, steps=1, expected_batch_size=1.0)
    mechanisms.append(("claims sigma 1, adds 0.25", MisreportedMechanism.with_noise_scaled(claimed, 0.25)))
    for index, (name, mechanism) in enumerate(mechanisms):
        started = time.perf_counter()
        runs = run_gradient_canary_trials(mechanism, trials, jax.random.fold_in(key, index))
        bounds = {
            "CP": privacy.clopper_pearson_audit(runs.present_scores, runs.absent_scores, delta=DELTA,
                                                threshold_selection="split").epsilon_lower_bound,
            "GDP": privacy.gaussian_dp_audit(runs.present_scores, runs.absent_scores, delta=DELTA,
                                             threshold_selection="split").epsilon_lower_bound,
        }
        report = mechanism.report(DELTA)
        epsilon = report.epsilon if report.noise_multiplier > 0 else float("inf")
        yield (f"audit of one release, {name}", " ".join(f"{k} {v:.3f}" for k, v in bounds.items()),
               f"accountant {epsilon:.3f}  ({time.perf_counter() - started:.1f} s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000, help="canary trials per side")
    args = parser.parse_args(argv)
    rows = list(accounting_rows()) + list(audit_rows(args.trials, jax.random.key(0)))
    width = max(len(row[0]) for row in rows)
    for name, first, second in rows:
        print(f"{name:<{width}}  {first:<22} {second}")


if __name__ == "__main__":
    main()
