"""One command per figure (experiments/figure.py): a preset's sweep run, skipped where complete,
collected and drawn; a killed sweep started again loses nothing already written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments.figure import SMOKE_BUDGET, make_figure, smoke_overrides
from experiments.figures import RECIPES
from experiments.outputs import completed_metrics, config_digest, write_json_atomically

from .conftest import REPO


def test_a_job_is_complete_only_with_metrics_of_the_same_config(tmp_path):
    digest = config_digest({"config.seed": 0, "config.algorithm.rounds": 2})
    assert digest == config_digest({"config.algorithm.rounds": 2, "config.seed": 0})  # order-free
    assert digest != config_digest({"config.seed": 1, "config.algorithm.rounds": 2})
    assert completed_metrics(tmp_path, digest) is None  # nothing written yet: run it
    (tmp_path / "metrics.json").write_text('{"config_digest": "')  # torn by a kill: run it again
    assert completed_metrics(tmp_path, digest) is None
    write_json_atomically(tmp_path / "metrics.json", {"config_digest": "another", "x": 1.0})
    assert completed_metrics(tmp_path, digest) is None  # another config's results: run it again
    write_json_atomically(tmp_path / "metrics.json", {"config_digest": digest, "x": 1.0})
    assert completed_metrics(tmp_path, digest)["x"] == 1.0


def test_an_unknown_figure_is_refused_before_any_job(tmp_path):
    with pytest.raises(SystemExit, match=r"NAME must be a preset with a plot recipe, one of \["):
        make_figure("no_such_figure", tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_smoke_budget_applies_only_keys_the_preset_has():
    image = dict(override.split("=", 1) for override in smoke_overrides("epsilon_sweep"))
    codes = dict(override.split("=", 1) for override in smoke_overrides("defense_table_ehr"))
    assert image["attack.config.iterations"] == SMOKE_BUDGET["attack.config.iterations"]
    assert "data.cohort.image_size" in image and "data.cohort.image_size" not in codes  # EHR has no images
    assert codes["algorithm.rounds"] == "2"
    # A sweep over models or attacks keeps their own keys (a model without model.width), and one seed.
    models = dict(override.split("=", 1) for override in smoke_overrides("he_overhead"))
    attacks = dict(override.split("=", 1) for override in smoke_overrides("secure_aggregation"))
    assert "model.width" not in models and models["seed"] == "0"
    assert "attack.num_victims" not in attacks and attacks["seed"] == "0"


def _figure_command(name: str, figures_dir) -> list[str]:
    return [sys.executable, "-m", "experiments.figure", name, "--smoke", "--figures-dir", str(figures_dir)]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_losing_finished_jobs(tmp_path):
    jobs = tmp_path / "epsilon_sweep-smoke" / "jobs"
    process = subprocess.Popen(_figure_command("epsilon_sweep", tmp_path), cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(jobs.glob("*/metrics.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {path: path.read_bytes() for path in jobs.glob("*/metrics.json")}
    assert 1 <= len(finished) < 6, "the kill should land mid-sweep"

    rerun = subprocess.run(_figure_command("epsilon_sweep", tmp_path), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("complete, skipped") == len(finished)
    for path, content in finished.items():
        assert path.read_bytes() == content, f"{path} was run again"
    assert len(list(jobs.glob("*/metrics.json"))) == 6
    for suffix in ("png", "csv", "md"):
        assert (tmp_path / f"epsilon_sweep-smoke.{suffix}").stat().st_size > 0
    digests = {json.loads(path.read_text())["config_digest"] for path in jobs.glob("*/metrics.json")}
    assert len(digests) == 6  # one config per job


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(RECIPES) - {"epsilon_sweep"}))  # epsilon_sweep: the kill test
def test_every_figure_preset_runs_on_a_smoke_budget(name, tmp_path):
    png = make_figure(name, tmp_path, smoke=True)
    assert png.stat().st_size > 0
    table = (tmp_path / f"{name}-smoke.md").read_text()
    assert "| job | status |" in table and "failed" not in table


def test_a_curve_recipe_averages_seeds_per_point_and_tabulates_mean_and_spread(tmp_path):
    from experiments.figures import Curves

    rows = [{"config.algorithm.batch_size": str(batch), "config.algorithm.local_steps": "1", "seed": str(seed),
             "attack.psnr_db": str(20.0 / batch + seed)} for batch in (1, 4) for seed in (0, 2)]
    rows.append({"config.algorithm.batch_size": "4", "config.algorithm.local_steps": "1", "attack.psnr_db": "nan"})
    recipe = Curves(x="config.algorithm.batch_size", series="config.algorithm.local_steps",
                    metrics=(("attack.psnr_db", "PSNR"), ("attack.code_f1", "code F1")))
    table = recipe(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    lines = table.splitlines()
    assert lines[0] == "| algorithm.local_steps | algorithm.batch_size | n | PSNR |"  # code F1: never reported
    # batch 1: seeds give 20 and 22 -> 21 ± 1; batch 4: 5 and 7 (the NaN job counts in n, not in the mean)
    assert lines[2:] == ["| 1 | 1 | 2 | 21 ± 1 |", "| 1 | 4 | 3 | 6 ± 1 |"]
