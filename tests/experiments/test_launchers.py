"""Hydra's launchers (DESIGN §5: sweeps run locally or on a cluster with no code change).

The presets in ``conf/hydra/launcher/`` compose onto their plugins; the SLURM preset becomes
the ``sbatch`` array it documents; and one 2-job sweep run through the basic launcher, joblib
(``processes``) and submitit's local executor (``slurm_local``) writes every job's
``metrics.json`` in the same folders and collects into the same table, timings aside. The
launchers come with the ``cluster`` extra (CI installs them via ``dev``); without them their
tests skip.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from .conftest import CONF, REPO, cli_command, compose_config, run_script, smoke_overrides

COLLECT = REPO / "scripts" / "collect.py"
LAUNCHERS = CONF / "hydra" / "launcher"
# Columns a launcher may change: wall-clock times, and the commit (provenance: one landing while
# the sweeps run changes it, whatever the launcher).
NOT_COMPARED = re.compile(r"\.seconds|^git_sha$")

JOBLIB, SUBMITIT = "hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher"
#: Each preset, the plugin it needs and the launcher class it selects.
PRESETS = {
    "processes": (JOBLIB, f"{JOBLIB}.joblib_launcher.JoblibLauncher"),
    "slurm": (SUBMITIT, f"{SUBMITIT}.submitit_launcher.SlurmLauncher"),
    "slurm_local": (SUBMITIT, f"{SUBMITIT}.submitit_launcher.LocalLauncher"),
}


def needs_plugin(preset: str) -> None:
    pytest.importorskip(PRESETS[preset][0], reason='the launcher plugins come with pip install -e ".[cluster]"')


def read_csv(path: Path) -> list[dict]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


# -- the presets -------------------------------------------------------------------------------

def test_every_preset_is_covered():
    assert sorted(path.stem for path in LAUNCHERS.glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_onto_its_plugin(preset):
    needs_plugin(preset)
    cfg = compose_config([f"hydra/launcher={preset}"], hydra_node=True)
    launcher = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == preset
    assert launcher._target_ == PRESETS[preset][1]
    # Every knob the preset sets lands in the plugin's schema (a misspelt key fails to compose).
    written = OmegaConf.to_container(OmegaConf.load(LAUNCHERS / f"{preset}.yaml"))
    knobs = {key: value for key, value in written.items() if key != "defaults"}
    assert knobs, f"{preset}.yaml sets nothing"
    for key, value in knobs.items():
        assert launcher[key] == value, key


def _never_run(cfg):  # the task a submission would run; the fake sbatch refuses before it can
    raise AssertionError("the job ran")


def test_slurm_preset_submits_the_array_it_documents(tmp_path, monkeypatch):
    """The real plugin and submitit, up to ``sbatch``: a fake one keeps the script and refuses it."""
    needs_plugin("slurm")
    import hydra.utils
    from hydra.types import HydraContext
    from submitit.core.utils import FailedJobError

    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "sbatch: error: not a cluster" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    sweep_dir = tmp_path / "sweep"
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                          "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep_dir}"], hydra_node=True)
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    # The context is used by each job on its node, never by the submission itself.
    launcher.setup(hydra_context=HydraContext(config_loader=None, callbacks=None), task_function=_never_run, config=cfg)
    with pytest.raises(FailedJobError, match="sbatch: error: not a cluster"):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)

    directives = set(re.findall(r"^#SBATCH (\S+)$", script.read_text(), re.MULTILINE))
    assert {"--array=0-1%1", "--partition=gpu", "--time=30", "--gpus-per-task=1", "--cpus-per-task=8",
            "--mem=32GB", "--ntasks-per-node=1", "--nodes=1", "--job-name=fedpriv"} <= directives, directives
    assert f"--output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out" in directives
    # The nodes run this very interpreter (the same venv, on a shared file system).
    assert f"{sys.executable} -u -m submitit.core._submit {sweep_dir}/.submitit/%j" in script.read_text()


# -- one sweep, three launchers (slow: each sweep starts its own Python processes) ---------------

@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Runs a 2-job sweep through a launcher into its own folder, once per launcher in this module."""
    root = tmp_path_factory.mktemp("launchers")
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(preset: str) -> tuple[Path, subprocess.CompletedProcess]:
        if preset not in done:
            sweep_dir = root / preset
            # The smoke config (MLP, two rounds, three attack iterations): the attack's scores make
            # the seeds' rows differ, so two tables agree only if every job computed the same numbers.
            sweep = ("seed=0,1", *smoke_overrides(), f"hydra.sweep.dir={sweep_dir}")
            # One JAX compilation cache for all three: later sweeps reuse the programs (same numbers).
            command, env = cli_command("-m", f"hydra/launcher={preset}", *sweep, cache_dir=root / "jax_cache")
            result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO.parent, env=env)
            assert result.returncode == 0, f"{preset}: {result.stderr[-3000:]}"
            done[preset] = sweep_dir, result
        return done[preset]

    return run


def collected_table(sweep_dir: Path) -> list[dict]:
    """The sweep's table as ``scripts/collect.py`` writes it, without the ``NOT_COMPARED`` columns."""
    collected = run_script(COLLECT, str(sweep_dir))
    assert collected.returncode == 0, collected.stderr
    assert "2 jobs (0 failed)" in collected.stdout
    return [{key: value for key, value in row.items() if not NOT_COMPARED.search(key)}
            for row in read_csv(sweep_dir / "results.csv")]


def jobs_of(sweep_dir: Path) -> list[Path]:
    jobs = sorted(path for path in sweep_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    for job in jobs:
        assert (job / "metrics.json").is_file() and not (job / "error.json").exists(), job
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["processes", "slurm_local"])
def test_sweep_through_a_launcher_collects_the_same_table(preset, sweeps):
    needs_plugin(preset)
    basic_dir, _ = sweeps("basic")
    sweep_dir, result = sweeps(preset)

    # Each job wrote its own metrics.json, in the folder the basic launcher gives it.
    assert [job.name for job in jobs_of(sweep_dir)] == [job.name for job in jobs_of(basic_dir)]
    assert [job.name.split("_", 1)[0] for job in jobs_of(sweep_dir)] == ["0", "1"]
    # The sweep really went through the plugin.
    if preset == "processes":
        assert "Joblib.Parallel(n_jobs=2," in result.stdout + result.stderr
    else:
        logs = sorted((sweep_dir / ".submitit").glob("*/*_0_log.out"))
        results = sorted((sweep_dir / ".submitit").glob("*/*_0_result.pkl"))
        assert len(logs) == len(results) == 2, sorted((sweep_dir / ".submitit").rglob("*"))

    reference, table = collected_table(basic_dir), collected_table(sweep_dir)
    assert [row["config.seed"] for row in table] == ["0", "1"]
    assert table[0]["attack.psnr_db"] != table[1]["attack.psnr_db"]  # the seeds' rows differ...
    assert table == reference  # ...and each equals the basic launcher's, column for column
