"""One command per figure: run a preset's sweep, skipping jobs already complete, collect its
table and draw it.

    python -m experiments.figure epsilon_sweep           # figures/epsilon_sweep.{png,csv,md}
    python -m experiments.figure defense_table_ct --smoke

``NAME`` is a preset of ``conf/experiment/`` with a plot recipe of the same name in
``experiments/figures.py``. Jobs run in ``FIGURES/NAME/jobs/<overrides>``: a job whose
``metrics.json`` holds the fingerprint of the same resolved config is complete and skipped
(``experiments/run.py``), so a killed sweep started again runs only what is missing; outputs
are written atomically, so a killed job leaves no partial result behind. ``--smoke`` runs
every job on a tiny budget (its own folder, ``NAME-smoke``) to check the pipeline, not the
science.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
sys.path.insert(0, str(REPO))  # scripts/ is not a package

from experiments.figures import RECIPES  # noqa: E402
from fedpriv.progress import progress_bar  # noqa: E402
from scripts.collect import collect, write_csv  # noqa: E402

# The tiny budget of --smoke; each key is applied where the preset's composed config has it.
SMOKE_BUDGET = {
    "seed": "0",  # one seed of a preset that sweeps several
    "algorithm.rounds": "2",
    "data.cohort.num_records": "48",
    "data.cohort.image_size": "16",
    "data.partition.num_clients": "2",
    "data.cohort.num_sites": "2",  # hospitals = sites for the EHR and notes cohorts
    "algorithm.batch_size": "1",  # 48 records leave no hospital a batch of 128
    "data.partition.min_records": "4",
    "model.width": "2",
    "attack.num_victims": "1",
    "attack.config.iterations": "3",
    "attack.config.latent_iterations": "3",
    "attack.config.search_rounds": "2",
    "attack.prior.steps": "5",
    "attack.public_records": "64",
}
# Columns of the Markdown table beside every figure (those the jobs reported).
SUMMARY_COLUMNS = ("utility.test_accuracy", "privacy.epsilon", "privacy.unit", "attack.psnr_db",
                   "attack.baseline_psnr_db", "attack.ssim", "attack.code_f1", "attack.token_term_f1",
                   "attack.status", "train.seconds", "scenario.seconds")


def smoke_overrides(name: str) -> list[str]:
    """``SMOKE_BUDGET`` restricted to the keys the preset's config has (others would be refused)
    and that no swept group replaces (``model.width`` when the sweep runs models without one)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    swept_groups = {key for key in OmegaConf.select(composed, "hydra.sweeper.params") or {} if (CONF / key).is_dir()}
    return [f"{key}={value}" for key, value in SMOKE_BUDGET.items()
            if OmegaConf.select(composed, key) is not None and key.split(".")[0] not in swept_groups]


def run_sweep(name: str, jobs_dir: Path, overrides: list[str]) -> int:
    """Runs the preset's sweep through the project's entry point, with a bar over its jobs (their
    printed output goes to ``jobs.log`` beside them); returns its exit status."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    return run_jobs_with_bar(jobs_dir, [f"experiment={name}", *overrides], sweep_size(name, overrides),
                             description=f"{name} jobs", log=jobs_dir / "jobs.log")


def sweep_size(name: str, overrides: list[str]) -> int:
    """How many jobs the preset sweeps: the product of its sweeper parameters' choices."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose(config_name="config", overrides=[f"experiment={name}", *overrides],
                           return_hydra_config=True)
    parameters = dict(OmegaConf.select(composed, "hydra.sweeper.params") or {})
    parameters.update(override.split("=", 1) for override in overrides)  # the command line wins a key
    return math.prod(len(str(choices).split(",")) for choices in parameters.values())


# What experiments/run.py prints when a job ends: its outputs, or that it was complete already.
JOB_END_PREFIXES = ("outputs: ", "complete, skipped")


def run_jobs_with_bar(jobs_dir: Path, overrides: list[str], total: int, *, description: str, log: Path,
                      subdir: str = "${hydra.job.override_dirname}", env: dict | None = None) -> int:
    """``run_jobs`` with one bar over the jobs (theirs turned off) and their printed output in ``log``;
    without a terminal, one line per finished job instead of the bar."""
    env = {**(os.environ if env is None else env), "FEDPRIV_PROGRESS": "0"}
    with log.open("a") as stream, progress_bar(description, total) as advance:
        def on_line(line: str) -> None:
            stream.write(line)
            stream.flush()
            if line.startswith(JOB_END_PREFIXES):
                if advance is None:
                    print(line.rstrip(), flush=True)
                else:
                    advance(1)
        return run_jobs(jobs_dir, overrides, subdir=subdir, env=env, on_line=on_line)


def run_jobs(jobs_dir: Path, overrides: list[str], *, subdir: str = "${hydra.job.override_dirname}",
             env: dict | None = None, on_line=None) -> int:
    """Runs ``experiments/run.py -m OVERRIDES`` with one folder per job under ``jobs_dir`` (named
    by ``subdir``); a job already complete there is skipped. Returns the exit status.

    ``on_line``: called with each line the sweep prints (its stdout is then not shown), e.g.
    to draw a progress bar over the jobs (``experiments/assess.py``).
    """
    command = [sys.executable, str(REPO / "experiments" / "run.py"), "-m", f"hydra.sweep.dir={jobs_dir}",
               f"hydra.sweep.subdir={subdir}", *overrides]
    if on_line is None:
        return subprocess.run(command, cwd=REPO, check=False, env=env).returncode
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            on_line(line)
    return process.returncode


def summary_markdown(name: str, rows: list[dict]) -> str:
    """Every job as one line of the columns it reported; failed jobs with their error."""
    columns = [column for column in SUMMARY_COLUMNS if any(column in row for row in rows)]
    lines = [f"# {name}", "", "| job | status | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(column, "")) for column in columns]
        status = row["status"] if row["status"] == "ok" else f"failed: {row.get('error', '')}"
        lines.append(f"| {_label(row['job'])} | {status} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(job: str) -> str:
    """A job's folder name (its overrides) without the smoke budget, which every job shares."""
    return ",".join(part for part in job.split(",") if part.split("=", 1)[0] not in SMOKE_BUDGET) or job


def _cell(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).replace("|", "/")
    return f"{number:.4g}" if math.isfinite(number) else str(value)


def make_figure(name: str, figures_dir: Path, *, smoke: bool = False) -> Path:
    """Runs, collects and draws ``name``; returns the PNG. Raises ``SystemExit`` naming what is wrong."""
    if name not in RECIPES or not (CONF / "experiment" / f"{name}.yaml").is_file():
        raise SystemExit(f"error: NAME must be a preset with a plot recipe, one of {sorted(RECIPES)}; got {name!r}")
    stem = f"{name}-smoke" if smoke else name
    jobs_dir = figures_dir / stem / "jobs"
    status = run_sweep(name, jobs_dir, smoke_overrides(name) if smoke else [])
    rows = collect(jobs_dir)  # every job launched, failed ones included
    figures_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, figures_dir / f"{stem}.csv")
    png = figures_dir / f"{stem}.png"
    table = RECIPES[name]([row for row in rows if row["status"] == "ok"], png)
    (figures_dir / f"{stem}.md").write_text((table + "\n" if table else "") + summary_markdown(stem, rows))
    failed = sum(row["status"] != "ok" for row in rows)
    print(f"{stem}: {len(rows)} jobs ({failed} failed) -> {png}, .csv, .md")
    if status != 0 or failed:
        raise SystemExit(f"error: the sweep of {name} ended with status {status} and {failed} failed job(s); "
                         f"see {jobs_dir}/*/error.json")
    return png


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"one of {sorted(RECIPES)}")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget per job, to check the pipeline")
    parser.add_argument("--figures-dir", type=Path, default=REPO / "figures")
    args = parser.parse_args(argv)
    return make_figure(args.name, args.figures_dir.resolve(), smoke=args.smoke)


if __name__ == "__main__":
    main()
