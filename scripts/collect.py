"""Joins every job's metrics.json under a sweep folder into one CSV.

    python scripts/collect.py multirun/2026-11-24/10-00-00            # -> .../results.csv
    python scripts/collect.py SWEEP_DIR --output table.csv

Jobs that failed (an error.json and no metrics.json) appear as rows with status
"failed" and their error, so a sweep's table shows every job it launched.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def collect(sweep_dir: Path) -> list[dict]:
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: SWEEP_DIR {str(sweep_dir)!r} is not a folder")
    rows = []
    for job in sorted({p.parent for p in sweep_dir.rglob("metrics.json")} | {p.parent for p in sweep_dir.rglob("error.json")}):
        metrics_file, error_file = job / "metrics.json", job / "error.json"
        if metrics_file.exists():
            try:
                row = json.loads(metrics_file.read_text())
            except json.JSONDecodeError as error:
                raise SystemExit(f"error: {metrics_file} is not valid JSON ({error})") from error
            row["status"] = "ok"
        else:
            row = {"status": "failed", "error": json.loads(error_file.read_text()).get("error", "")}
        row["job"] = str(job.relative_to(sweep_dir))
        rows.append(row)
    if not rows:
        raise SystemExit(f"error: no metrics.json or error.json under {sweep_dir}")
    return rows


def write_csv(rows: list[dict], output: Path) -> None:
    columns = ["job", "status"] + sorted({key for row in rows for key in row} - {"job", "status"})
    with output.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--output", type=Path, default=None, help="CSV path (default: SWEEP_DIR/results.csv)")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    output = args.output or args.sweep_dir / "results.csv"
    write_csv(rows, output)
    failed = sum(row["status"] == "failed" for row in rows)
    sys.stdout.write(f"{len(rows)} jobs ({failed} failed) -> {output}\n")
    return output


if __name__ == "__main__":
    main()
