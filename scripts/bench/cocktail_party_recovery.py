"""Cocktail Party Attack (Kariyappa et al., ICML 2023, arXiv 2209.05578) through secure aggregation.

    python scripts/bench/cocktail_party_recovery.py                       # the full table -> outputs/bench/*.csv
    python scripts/bench/cocktail_party_recovery.py --hospitals 2 4 --batch-sizes 1 2 --csv /tmp/cpa.csv
    python scripts/bench/cocktail_party_recovery.py --hospitals             # part 2 (screening) only

Part 1, recovery vs hospitals x batch size per hospital: each cell is one scenario (``model=mlp
attack=cocktail_party defense=secure_aggregation``, FedSGD, the CT phantoms, every hospital in
round 0) run in this process; the server sees only the secure sum and the attack unmixes all
``hospitals x batch`` records from it. Scores are the scenario's image scorer (PSNR, SSIM and the
share of records with SSIM >= 0.6, every record of the round counted, Hungarian pairing on MSE)
plus the mean |Pearson correlation| of the scored pairs.

Part 2, against client-side model screening (the screen of ``conf/defense/model_screening.yaml``
added to secure aggregation): four rounds, the attack on round 3 (the change check needs 3
accepted rounds). The Cocktail Party server sends the honest model, so the screen has nothing
to detect: every refusal is a false positive and the leakage prevented is the drop in
recognisable share against the same run without the screen. The imprint server (Fowl et al.
2022, arXiv 2110.13057) is the positive control: a crafted model the screen should refuse (run
without secure aggregation, see ``DEFENSES``). Detection rate = refused crafted models / models
sent; false positives = refused honest models / models sent.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from experiments.build import build_scenario  # noqa: E402
from fedpriv.scenario import run_scenario  # noqa: E402

BASE = {"model": "mlp", "algorithm.rounds": "1", "data.cohort.num_records": "400", "attack.num_victims": "1"}


def run(overrides: dict) -> tuple[dict, float]:
    """One scenario in this process; its metrics and the mean |correlation| of the scored pairs."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{k}={v}" for k, v in {**BASE, **overrides}.items()])
    result = run_scenario(build_scenario(cfg))
    return result.metrics, mean_abs_correlation(result.truth, result.reconstructed)


def mean_abs_correlation(truth, reconstructed) -> float:
    """Mean |Pearson correlation| over the scorer's pairs (a missing record scores 0)."""
    if truth is None:
        return float("nan")
    flat_truth = truth.reshape(-1, int(np.prod(truth.shape[2:])))
    flat_recon = np.nan_to_num(reconstructed.reshape(flat_truth.shape))
    values = []
    for t, r in zip(flat_truth, flat_recon):
        if np.std(t) == 0:  # the zero padding of a victim with fewer records
            continue
        values.append(0.0 if np.std(r) == 0 else abs(float(np.corrcoef(t, r)[0, 1])))
    return float(np.mean(values)) if values else float("nan")


def recovery_rows(hospitals: list[int], batch_sizes: list[int]) -> list[dict]:
    rows = []
    for count in hospitals:
        for batch in batch_sizes:
            started = time.perf_counter()
            metrics, correlation = run({"attack": "cocktail_party", "defense": "secure_aggregation",
                                        "data.partition.num_clients": str(count), "algorithm.batch_size": str(batch)})
            rows.append({"part": "recovery", "attack": "cocktail_party", "defense": "secure_aggregation",
                         "hospitals": count, "batch_size": batch, "records": metrics.get("attack.records_scored"),
                         "psnr_db": metrics.get("attack.psnr_db"), "ssim": metrics.get("attack.ssim"),
                         "ssim_ge_0.6": metrics.get("attack.recognisable_share"), "abs_correlation": correlation,
                         "baseline_psnr_db": metrics.get("attack.baseline_psnr_db"),
                         "attack_seconds": metrics.get("attack.seconds"),
                         "seconds": time.perf_counter() - started})
            print(_line(rows[-1]), flush=True)
    return rows


# The client-side screen of conf/defense/model_screening.yaml, added to secure aggregation.
SCREEN = ("{_target_:fedpriv.defenses.model_screening.ModelScreeningConfig,duplicate_cosine:0.999,"
          "max_duplicate_fraction:0.05,norm_z_threshold:8.0,change_z_threshold:6.0}")
# (unscreened, screened) per attack. The imprint control runs without secure aggregation: when every
# hospital refuses under secure aggregation, scenario_attacks.merge_participants has no participant
# to merge and raises (np.concatenate of nothing), so that cell cannot run there yet.
DEFENSES = {"cocktail_party": {"secure_aggregation": {"defense": "secure_aggregation"},
                               "secure_aggregation+model_screening": {
                                   "defense": "secure_aggregation", "defense.model_screening": SCREEN,
                                   "defense.name": "secure_aggregation_model_screening"}},
            "imprint": {"none": {"defense": "none"}, "model_screening": {"defense": "model_screening"}}}


def screening_rows(count: int, batch: int) -> list[dict]:
    rows = []
    for attack, defenses in DEFENSES.items():
        for defense, defense_overrides in defenses.items():
            started = time.perf_counter()
            metrics, correlation = run({"attack": attack, **defense_overrides, "algorithm.rounds": "4",
                                        "attack.observe_round": "3", "data.partition.num_clients": str(count),
                                        "algorithm.batch_size": str(batch)})
            screened = "model_screening" in defense
            refused = metrics.get("defense.models_refused", 0)
            sent = 4 * count
            rows.append({"part": "screening", "attack": attack, "defense": defense, "hospitals": count,
                         "batch_size": batch, "records": metrics.get("attack.records_scored", 0),
                         "psnr_db": metrics.get("attack.psnr_db"), "ssim": metrics.get("attack.ssim"),
                         "ssim_ge_0.6": metrics.get("attack.recognisable_share", 0.0), "abs_correlation": correlation,
                         "models_refused": refused,
                         "detection_rate": refused / sent if screened and attack == "imprint" else float("nan"),
                         "false_positive_rate": (refused / sent if screened and attack == "cocktail_party"
                                                 else float("nan")),
                         "attack_seconds": metrics.get("attack.seconds"), "seconds": time.perf_counter() - started})
            print(_line(rows[-1]), flush=True)
    for attack, defenses in DEFENSES.items():
        without, screened = (next(r for r in rows if r["attack"] == attack and r["defense"] == d) for d in defenses)
        screened["leakage_prevented"] = (without["ssim_ge_0.6"] or 0.0) - (screened["ssim_ge_0.6"] or 0.0)
    return rows


TABLE = ("attack", "defense", "hospitals", "batch_size", "records", "psnr_db", "ssim", "ssim_ge_0.6",
         "abs_correlation", "models_refused", "detection_rate", "false_positive_rate", "leakage_prevented", "seconds")


def _table(rows: list[dict]) -> str:
    """The rows as an aligned text table of the ``TABLE`` columns (blank where a row has none)."""
    cell = lambda value: "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
    cells = [list(TABLE)] + [[cell(row.get(key)) for key in TABLE] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE))]
    return "\n".join("  ".join(value.rjust(width) for value, width in zip(line, widths)) for line in cells)


def _line(row: dict) -> str:
    shown = {key: (f"{value:.3f}" if isinstance(value, float) else value) for key, value in row.items()}
    return "  ".join(f"{key}={value}" for key, value in shown.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", type=int, nargs="*", default=[2, 4, 8, 16], help="none: skip part 1")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--screening-hospitals", type=int, default=4)
    parser.add_argument("--screening-batch-size", type=int, default=2)
    parser.add_argument("--csv", default="outputs/bench/cocktail_party_recovery.csv")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = recovery_rows(args.hospitals, args.batch_sizes)
    rows += screening_rows(args.screening_hospitals, args.screening_batch_size)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(_table(rows))
    print(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s -> {args.csv}")


if __name__ == "__main__":
    main()
