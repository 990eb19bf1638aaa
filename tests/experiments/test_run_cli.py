"""The real command line: experiments/run.py (single run and -m sweeps), scripts/collect.py,
experiments/figures.py. The runs themselves start in the background (see ``CliRuns``)."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import math
import re

import matplotlib.image
import pytest

from experiments.outputs import objective_key

from .conftest import REPO, run_script, run_smoke

COLLECT = REPO / "scripts" / "collect.py"
FIGURES = REPO / "experiments" / "figures.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMING = re.compile(r"\.seconds")


def read_png(path):
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return matplotlib.image.imread(path)


def read_csv(path) -> list[dict]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def job_dirs(sweep_dir):
    return sorted(path for path in sweep_dir.iterdir() if path.is_dir())


def load_collect():
    spec = importlib.util.spec_from_file_location("fedpriv_collect", COLLECT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- one run -----------------------------------------------------------------------------------

def test_run_writes_flat_metrics_a_grid_and_the_table(cli_runs):
    result = cli_runs.result("run")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((cli_runs.run_dir / "metrics.json").read_text())

    assert all(not isinstance(value, (dict, list)) for value in metrics.values()), "metrics.json must be flat"
    assert 0.0 <= metrics["utility.test_accuracy"] <= 1.0
    assert math.isfinite(metrics["attack.psnr_db"]) and metrics["attack.psnr_db"] > 0
    assert metrics["privacy.epsilon"] == "inf"  # no defense: no guarantee (strict JSON: a string)
    assert metrics["config.seed"] == 0
    assert metrics["config.model.name"] == "mlp"
    assert metrics["config.algorithm.rounds"] == 2
    assert metrics["config.data.cohort.num_records"] == 32
    assert metrics["config.impl.client_backend"] in ("vmap", "loop")  # "auto" is resolved before it is recorded
    assert not [key for key in metrics if key.startswith("config.hydra")]
    assert metrics["versions.jax"] == importlib.metadata.version("jax")
    assert metrics["versions.dp-accounting"] == "0.6.0"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", metrics["git_sha"])
    assert (cli_runs.run_dir / ".hydra" / "config.yaml").is_file()
    assert not (cli_runs.run_dir / "error.json").exists()

    # The same config in-process gives the same numbers: the CLI adds bookkeeping, not behaviour.
    in_process = run_smoke({}).metrics
    for key, value in in_process.items():
        if TIMING.search(key):
            continue
        if isinstance(value, float):
            # Strict JSON stores non-finite floats as "inf"/"nan" strings.
            assert float(metrics[key]) == pytest.approx(value, rel=1e-6, nan_ok=True), key
        else:
            assert metrics[key] == value, key

    grid = read_png(cli_runs.run_dir / "reconstruction.png")
    # Originals above reconstructions, one column per victim: not one tall column.
    assert grid.ndim == 3 and grid.shape[0] > 100 and grid.shape[1] >= grid.shape[0]

    assert "Unable to initialize backend" not in result.stderr + result.stdout
    table = result.stdout
    assert re.search(r"^metric\s+value$", table, re.MULTILINE)
    assert metrics["attack.kind"] == "images"
    for key in ("utility.test_accuracy", "attack.psnr_db", "attack.baseline_psnr_db", "attack.psnr_gain_db",
                "train.seconds"):
        assert re.search(rf"^{re.escape(key)}\s+{re.escape(format(metrics[key], '.4g'))}$", table, re.MULTILINE), key
    assert f"outputs: {cli_runs.run_dir}" in table


def test_run_attacks_the_default_convnet(cli_runs):
    result = cli_runs.result("convnet")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((cli_runs.convnet_dir / "metrics.json").read_text())
    assert metrics["config.model.name"] == "convnet" and metrics["config.model.width"] == 2
    assert metrics["config.impl.client_backend"] in ("vmap", "loop")
    assert metrics["attack.records_scored"] == 2  # two victims, one record each (FedSGD, batch 1)
    assert metrics["attack.label_accuracy"] == 1.0  # iDLG is exact at batch 1
    assert 0 < metrics["attack.psnr_db"] < 100 and -1 <= metrics["attack.ssim"] <= 1
    assert metrics["model.num_params"] > metrics["config.model.width"] * 100
    read_png(cli_runs.convnet_dir / "reconstruction.png")


def test_the_sweep_objective_follows_the_attack_kind():
    assert objective_key("auto", {"attack.kind": "images"}) == "attack.psnr_db"
    assert objective_key("auto", {"attack.kind": "codes"}) == "attack.code_f1"
    assert objective_key("auto", {"attack.kind": "tokens"}) == "attack.token_term_f1"
    assert objective_key("auto", {}) == "utility.test_accuracy"
    assert objective_key("attack.ssim", {"attack.kind": "codes"}) == "attack.ssim"


# -- a sweep -----------------------------------------------------------------------------------

def test_sweep_runs_every_job_and_collects_into_one_table(cli_runs, tmp_path):
    result = cli_runs.result("sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(cli_runs.sweep_dir)
    assert len(jobs) == 4
    for job in jobs:
        assert (job / "metrics.json").is_file() and not (job / "error.json").exists()
        assert "defense=" in job.name and "privacy.target_epsilon=" in job.name
        assert "impl" not in job.name  # impl knobs stay out of run names

    collected = run_script(COLLECT, str(cli_runs.sweep_dir))
    assert collected.returncode == 0, collected.stderr
    assert "4 jobs (0 failed)" in collected.stdout
    rows = read_csv(cli_runs.sweep_dir / "results.csv")
    assert len(rows) == 4
    assert {row["status"] for row in rows} == {"ok"}
    assert len({row["job"] for row in rows}) == 4
    pairs = sorted((row["config.defense.name"], float(row["config.privacy.target_epsilon"])) for row in rows)
    assert pairs == sorted((defense, epsilon) for defense in ("none", "dp_sgd") for epsilon in (1.0, 8.0))

    dp_rows = sorted((row for row in rows if row["config.defense.name"] == "dp_sgd"),
                     key=lambda row: float(row["config.privacy.target_epsilon"]))
    for row in dp_rows:
        target = float(row["config.privacy.target_epsilon"])
        assert float(row["privacy.epsilon_rdp"]) <= target + 1e-6
        assert float(row["privacy.epsilon_rdp"]) >= 0.9 * target  # calibrated, not merely safe
        assert row["privacy.unit"] == "example"
    noise = [float(row["privacy.noise_multiplier"]) for row in dp_rows]  # epsilon 1, 8
    assert noise[0] > noise[1] > 0, noise
    for row in rows:
        if row["config.defense.name"] == "none":
            assert float(row["privacy.epsilon"]) == math.inf

    # --output puts the table elsewhere; the figure recipe draws from it.
    table = tmp_path / "table.csv"
    assert run_script(COLLECT, str(cli_runs.sweep_dir), "--output", str(table)).returncode == 0
    assert read_csv(table) == rows
    drawn = run_script(FIGURES, "epsilon_sweep", str(table))
    assert drawn.returncode == 0, drawn.stderr
    figure = read_png(tmp_path / "epsilon_sweep.png")
    assert figure.shape[1] > figure.shape[0] > 100  # two panels side by side
    assert run_script(FIGURES, "epsilon_sweep", str(table), "--output", str(tmp_path / "f.png")).returncode == 0
    read_png(tmp_path / "f.png")


def test_a_failed_job_leaves_the_others_alone(cli_runs):
    result = cli_runs.result("failing_sweep")
    assert result.returncode != 0  # the sweep reports the failure...
    failed, succeeded = job_dirs(cli_runs.failing_sweep_dir)
    assert "privacy.target_epsilon=-1" in failed.name and "privacy.target_epsilon=3" in succeeded.name

    error = json.loads((failed / "error.json").read_text())
    assert "target_epsilon must be a finite number > 0, got -1.0" in error["error"]
    assert "build_scenario" in error["traceback"]  # raised while building, before any compute
    assert not (failed / "metrics.json").exists()

    # ...and the job after it ran to the end.
    metrics = json.loads((succeeded / "metrics.json").read_text())
    assert not (succeeded / "error.json").exists()
    assert metrics["config.defense.name"] == "dp_sgd"
    assert metrics["privacy.epsilon_rdp"] <= 3.0 + 1e-6

    collected = run_script(COLLECT, str(cli_runs.failing_sweep_dir))
    assert collected.returncode == 0, collected.stderr
    assert "2 jobs (1 failed)" in collected.stdout
    rows = {row["job"]: row for row in read_csv(cli_runs.failing_sweep_dir / "results.csv")}
    assert rows[failed.name]["status"] == "failed"
    assert "target_epsilon must be a finite number > 0" in rows[failed.name]["error"]
    assert rows[succeeded.name]["status"] == "ok"
    assert float(rows[succeeded.name]["privacy.epsilon_rdp"]) == pytest.approx(metrics["privacy.epsilon_rdp"])

    # The figure draws the jobs that finished and skips the failed one.
    drawn = run_script(FIGURES, "epsilon_sweep", str(cli_runs.failing_sweep_dir / "results.csv"))
    assert drawn.returncode == 0, drawn.stderr
    read_png(cli_runs.failing_sweep_dir / "epsilon_sweep.png")


# -- the scripts' own errors ---------------------------------------------------------------------

def test_collect_names_what_is_wrong(tmp_path):
    collect = load_collect()
    with pytest.raises(SystemExit, match="is not a folder"):
        collect.collect(tmp_path / "missing")
    with pytest.raises(SystemExit, match="no metrics.json or error.json"):
        collect.collect(tmp_path)
    (tmp_path / "0_job").mkdir()
    (tmp_path / "0_job" / "metrics.json").write_text("{torn")
    with pytest.raises(SystemExit, match=r"0_job/metrics.json is not valid JSON"):
        collect.collect(tmp_path)


def test_figures_refuses_a_missing_table(tmp_path):
    drawn = run_script(FIGURES, "epsilon_sweep", str(tmp_path / "missing.csv"))
    assert drawn.returncode != 0
    assert "is not a file" in drawn.stderr and "scripts/collect.py" in drawn.stderr
    unknown = run_script(FIGURES, "no_such_experiment", str(tmp_path / "missing.csv"))
    assert unknown.returncode == 2 and "epsilon_sweep" in unknown.stderr  # argparse lists the recipes


def test_epsilon_sweep_figure_draws_what_is_finite(tmp_path):
    from experiments.figures import epsilon_sweep

    def row(defense, epsilon, psnr, accuracy):
        return {"config.defense.name": defense, "privacy.epsilon_pld": epsilon, "attack.psnr_db": psnr,
                "utility.test_accuracy": accuracy, "status": "ok"}

    # DP jobs whose victims held no record that round have no PSNR (nan); the baseline has no epsilon.
    rows = [row("none", "inf", "12.5", "0.5"), row("dp_sgd", "0.7", "nan", "0.25"),
            row("dp_sgd", "2.4", "8.0", "0.25"), row("dp_sgd", "6.7", "nan", "0.5")]
    epsilon_sweep(rows, tmp_path / "mixed.png")
    assert read_png(tmp_path / "mixed.png").shape[1] > 500
    epsilon_sweep([row("dp_sgd", "0.7", "nan", "nan"), row("none", "inf", "nan", "nan")], tmp_path / "empty.png")
    read_png(tmp_path / "empty.png")
