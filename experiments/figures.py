"""One plot recipe per experiment preset, drawn from the CSV of scripts/collect.py.

    python experiments/figures.py epsilon_sweep SWEEP_DIR/results.csv [--output fig.png]
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read(csv_path: Path) -> list[dict]:
    with csv_path.open() as stream:
        return [row for row in csv.DictReader(stream) if row.get("status", "ok") == "ok"]


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _finite_mean(values) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else math.nan


def epsilon_sweep(rows: list[dict], output: Path) -> None:
    """Attack PSNR and test accuracy against the accountant's epsilon; no-defense as a line."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    by_epsilon = defaultdict(list)
    baseline = defaultdict(list)
    for row in rows:
        if row.get("config.defense.name") == "dp_sgd":
            by_epsilon[_number(row.get("privacy.epsilon_pld"))].append(row)
        else:
            baseline["psnr"].append(_number(row.get("attack.psnr_db")))
            baseline["accuracy"].append(_number(row.get("utility.test_accuracy")))
    # Non-finite values (no record to score, no epsilon) are left out: they cannot be drawn,
    # and one of them would make matplotlib's log axis raise.
    epsilons = sorted(e for e in by_epsilon if math.isfinite(e) and e > 0)
    for axis, key, label, base in ((left, "attack.psnr_db", "attack PSNR (dB)", "psnr"),
                                   (right, "utility.test_accuracy", "test accuracy", "accuracy")):
        means = [_finite_mean(_number(r.get(key)) for r in by_epsilon[e]) for e in epsilons]
        points = [(e, m) for e, m in zip(epsilons, means) if math.isfinite(m)]
        if points:
            axis.plot(*zip(*points), "o-", label="DP-SGD")
            axis.set_xscale("log")
        if math.isfinite(_finite_mean(baseline[base])):
            axis.axhline(_finite_mean(baseline[base]), color="gray", ls="--", label="no defense")
        axis.set_xlabel("epsilon (PLD, delta from config)")
        axis.set_ylabel(label)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output, dpi=150)
    plt.close(figure)


RECIPES = {"epsilon_sweep": epsilon_sweep}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(RECIPES))
    parser.add_argument("csv", type=Path)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        raise SystemExit(f"error: {args.csv} is not a file (make it with scripts/collect.py SWEEP_DIR)")
    output = args.output or args.csv.with_name(f"{args.experiment}.png")
    RECIPES[args.experiment](_read(args.csv), output)
    return output


if __name__ == "__main__":
    main()
