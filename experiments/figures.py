"""One plot recipe per experiment preset, drawn from the CSV of scripts/collect.py.

    python experiments/figures.py epsilon_sweep SWEEP_DIR/results.csv [--output fig.png]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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


def _leakage(row: dict) -> tuple[str, float]:
    """The leakage column: code F1, note-term F1 or PSNR, whichever the attack reported."""
    for key, label in (("attack.code_f1", "code F1"), ("attack.token_term_f1", "term F1"),
                       ("attack.psnr_db", "PSNR dB")):
        value = _number(row.get(key))
        if math.isfinite(value):
            return label, value
    return "", math.nan


def defense_table(rows: list[dict], output: Path) -> str:
    """One row per defense: utility, epsilon (unit), bytes per client, seconds per round, leakage.

    Plots leakage against test accuracy, one labelled point per defense, and returns the
    table as Markdown.
    """
    lines = ["| defense | test accuracy | epsilon (unit) | bytes/client (x plaintext) | s/round | leakage |",
             "|---|---|---|---|---|---|"]
    points = []
    for row in sorted(rows, key=lambda r: r.get("config.defense.name", "")):
        name = row.get("config.defense.name", "?")
        accuracy = _number(row.get("utility.test_accuracy"))
        epsilon, unit = _number(row.get("privacy.epsilon")), row.get("privacy.unit", "none")
        tiers = sorted(k for k in row if k.startswith("privacy.tier.") and k.endswith(".epsilon")
                       and math.isfinite(_number(row[k])))
        if tiers:
            epsilon_text = ", ".join(f"{k.split('.')[2]} {_number(row[k]):.2f}" for k in tiers)
        elif math.isfinite(epsilon):
            local = " local" if row.get("privacy.relation") == "replace_one_local" else ""
            epsilon_text = f"{epsilon:.2f} ({unit}{local})"
        else:
            epsilon_text = "none"
        sent, plain = _number(row.get("cost.bytes_per_client")), _number(row.get("cost.plaintext_bytes_per_client"))
        label, leak = _leakage(row)
        if label:
            leak_text = f"{label} {leak:.2f}"
        elif row.get("attack.status"):
            leak_text = row["attack.status"]
        elif _number(row.get("attack.records_scored")) == 0:
            leak_text = "no record in the victims' observed batches"
        else:
            leak_text = "n/a"
        lines.append(f"| {name} | {accuracy:.3f} | {epsilon_text} | {sent:,.0f} ({sent / plain:.2f}x) | "
                     f"{_number(row.get('train.seconds_per_round')):.3f} | {leak_text} |")
        points.append((name, accuracy, leak, label))
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, accuracy, leak, label in points:
        if math.isfinite(accuracy) and math.isfinite(leak):
            axis.scatter(accuracy, leak)
            axis.annotate(name, (accuracy, leak), fontsize=7)
    axis.set_xlabel("test accuracy")
    axis.set_ylabel(next((label for *_, label in points if label), "leakage"))
    figure.tight_layout()
    figure.savefig(output, dpi=150)
    plt.close(figure)
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Curves:
    """A recipe: each metric against one swept column, one line per value of another, as the
    mean over seeds with a band of one standard deviation; the table lists mean ± sd and n.

    Attributes:
      x: the swept column on the x axis (a ``config.*`` key or a metric).
      metrics: ``(column, label)`` per panel; columns no job reported are left out.
      series: the column that splits lines, or ``None`` for one line.
      log_x: a logarithmic x axis.
      unprotected_at_infinity: jobs without a defense sit at x = inf (the end of an epsilon
        axis), drawn one step right of the largest finite x and labelled "∞".
    """

    x: str
    metrics: tuple[tuple[str, str], ...]
    series: str | None = None
    log_x: bool = False
    unprotected_at_infinity: bool = False

    def _x(self, row: dict):
        if self.unprotected_at_infinity and row.get("config.defense.name") == "none":
            return math.inf
        return _sort_key(row.get(self.x))

    def __call__(self, rows: list[dict], output: Path) -> str:
        panels = [(key, label) for key, label in self.metrics if any(math.isfinite(_number(r.get(key))) for r in rows)]
        groups = defaultdict(list)  # (series value, x) -> rows, one per seed
        for row in rows:
            groups[(row.get(self.series, "") if self.series else "", self._x(row))].append(row)
        figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.4 * max(1, len(panels)), 3.0), squeeze=False)
        for axis, (key, label) in zip(axes[0], panels):
            for series in sorted({s for s, _ in groups}, key=_sort_key):
                points = sorted((x, _spread([_number(r.get(key)) for r in groups[(series, x)]]))
                                for s, x in groups if s == series)
                points = [(x, m, sd) for x, (m, sd, _) in points if math.isfinite(m) and isinstance(x, float)]
                if points:
                    xs, means, sds = (list(column) for column in zip(*points))
                    xs = [self._drawn_at(x, groups) for x in xs]
                    axis.plot(xs, means, "o-", label=f"{_short(self.series)}={series}" if self.series else None)
                    axis.fill_between(xs, [m - d for m, d in zip(means, sds)], [m + d for m, d in zip(means, sds)],
                                      alpha=0.2)
            axis.set_xscale("log" if self.log_x else "linear")
            if any(x == math.inf for _, x in groups):
                ticks = sorted({self._drawn_at(x, groups) for _, x in groups if isinstance(x, float)})
                axis.set_xticks(ticks, [f"{t:g}" if t != self._drawn_at(math.inf, groups) else "∞" for t in ticks])
            axis.set_xlabel(_short(self.x))
            axis.set_ylabel(label)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=6)
        figure.tight_layout()
        figure.savefig(output, dpi=150)
        plt.close(figure)
        return self._table(groups, panels)

    def _drawn_at(self, x: float, groups: dict) -> float:
        """Where ``x`` is drawn: itself, or for infinity one step right of the largest finite x."""
        if x != math.inf:
            return x
        finite = [value for _, value in groups if isinstance(value, float) and math.isfinite(value)] or [1.0]
        return max(finite) * 2 if self.log_x else max(finite) + 1

    def _table(self, groups: dict, panels) -> str:
        head = ([_short(self.series)] if self.series else []) + [_short(self.x), "n"] + [label for _, label in panels]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for series, x in sorted(groups, key=lambda key: (_sort_key(key[0]), key[1])):
            rows = groups[(series, x)]
            cells = [f"{m:.3g} ± {sd:.2g}" if math.isfinite(m) else "n/a"
                     for m, sd, _ in (_spread([_number(r.get(key)) for r in rows]) for key, _ in panels)]
            lines.append("| " + " | ".join(([str(series)] if self.series else []) + [_cell(x), str(len(rows))]
                                          + cells) + " |")
        return "\n".join(lines) + "\n"


def _sort_key(value):
    """Numbers sort as numbers (and plot on a numeric axis), anything else as text."""
    number = _number(value)
    return number if math.isfinite(number) else str(value)


def _spread(values) -> tuple[float, float, int]:
    """Mean, standard deviation and count of the finite values (NaN, 0, 0 without any)."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan, 0.0, 0
    mean = sum(finite) / len(finite)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite)), len(finite)


def _short(key: str | None) -> str:
    return (key or "").removeprefix("config.")


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


LEAKAGE_AND_UTILITY = (("attack.psnr_db", "attack PSNR (dB)"), ("attack.ssim", "attack SSIM"),
                       ("attack.recognisable_share", "share recognisable (SSIM >= 0.6)"),
                       ("utility.test_accuracy", "test accuracy"))

# Each recipe draws ``output`` from the collected rows and may return a Markdown table.
RECIPES = {
    "epsilon_sweep": epsilon_sweep,
    "defense_table_ct": defense_table,
    "defense_table_ehr": defense_table,
    "batch_and_local_steps": Curves(x="config.algorithm.batch_size", series="config.algorithm.local_steps",
                                    metrics=LEAKAGE_AND_UTILITY, log_x=True),
    "partition_skew": Curves(x="config.data.partition.alpha", series="config.data.partition.num_clients",
                             metrics=LEAKAGE_AND_UTILITY, log_x=True),
    "noise_schedules": Curves(x="config.privacy.schedule.kind", metrics=(
        ("privacy.epsilon", "epsilon"), *LEAKAGE_AND_UTILITY)),
    "secure_aggregation": Curves(x="config.data.partition.num_clients", series="choice.attack", log_x=True,
                                 metrics=LEAKAGE_AND_UTILITY[:3] + (("defense.models_refused", "models refused"),)),
    "tabular_leakage": Curves(x="config.algorithm.batch_size", series="choice.data", log_x=True, metrics=(
        ("attack.tabular_accuracy", "feature accuracy"), ("attack.tabular_categorical_accuracy", "categorical"),
        ("attack.tabular_numeric_accuracy", "numeric (within 0.319 sd)"))),
    "notes_exact_recovery": Curves(x="config.algorithm.batch_size", log_x=True, metrics=(
        ("attack.token_exact_note", "exact notes"), ("attack.token_rouge1_f1", "ROUGE-1 F1"),
        ("attack.token_rouge2_f1", "ROUGE-2 F1"), ("attack.token_term_f1", "medical-term F1"))),
    "he_overhead": Curves(x="model.num_params", series="config.defense.name", log_x=True, metrics=(
        ("cost.bytes_per_client", "bytes per hospital per round"), ("train.seconds_per_round", "seconds per round"))),
}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(RECIPES))
    parser.add_argument("csv", type=Path)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        raise SystemExit(f"error: {args.csv} is not a file (make it with scripts/collect.py SWEEP_DIR)")
    output = args.output or args.csv.with_name(f"{args.experiment}.png")
    table = RECIPES[args.experiment](_read(args.csv), output)
    if table:
        output.with_suffix(".md").write_text(table)
    return output


if __name__ == "__main__":
    main()
