"""Shared pieces of the Hydra/experiments tests: the conf folder, tiny smoke configs, files.

Every run here is a smoke run: 32 records of 16x16, two hospitals, two rounds, three attack
iterations, an MLP unless the test is about another model. Configs are composed in-process
with ``hydra.compose`` and run through ``build_scenario`` + ``run_scenario``; only the CLI
tests start ``experiments/run.py`` in a subprocess, in a background thread that overlaps
with the in-process tests (see ``CliRuns``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
RUN = REPO / "experiments" / "run.py"

#: The tiny config every smoke run starts from (``attack.config.*`` is added only when the
#: composed attack has a config: ``attack=none`` has none to override).
SMOKE = {
    "data.cohort.num_records": "32",
    "data.cohort.image_size": "16",
    "data.partition.num_clients": "2",
    "data.partition.min_records": "4",
    "algorithm.rounds": "2",
    "model": "mlp",
}
# Tiny attack budgets, each applied where the composed attack has that key.
SMOKE_ATTACK = {"attack.config.iterations": "3", "attack.config.latent_iterations": "3",
                "attack.config.search_rounds": "2", "attack.prior.steps": "5", "attack.public_records": "64"}


def group_options(group: str) -> list[str]:
    """The options of a config group, from the YAML files in its folder (new files are covered)."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


# Groups of another primary config in conf/ (conf/assess.yaml, `fedpriv assess`), not of config.yaml.
OTHER_APPS_GROUPS = ("assess",)


def groups() -> list[str]:
    """The config groups of config.yaml: the folders of conf/ with YAML options."""
    return sorted(path.name for path in CONF.iterdir()
                  if path.is_dir() and any(path.glob("*.yaml")) and path.name not in OTHER_APPS_GROUPS)


def compose_config(overrides: list[str] | tuple[str, ...] = (), *, hydra_node: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_node)


def smoke_overrides(changes: dict[str, str] | None = None) -> list[str]:
    """``SMOKE`` with ``changes`` applied (a key in both takes the value of ``changes``)."""
    merged = {**SMOKE, **(changes or {})}
    composed = compose_config([f"{key}={value}" for key, value in merged.items()])
    if composed.attack.config is not None:
        budget = {key: value for key, value in SMOKE_ATTACK.items() if OmegaConf.select(composed, key) is not None}
        merged = {**SMOKE, **budget, **(changes or {})}
    return [f"{key}={value}" for key, value in merged.items()]


def compose_smoke(changes: dict[str, str] | None = None) -> DictConfig:
    return compose_config(smoke_overrides(changes))


@functools.lru_cache(maxsize=None)
def _run_cached(overrides: tuple[str, ...]):
    from experiments.build import build_scenario
    from fedpriv.scenario import run_scenario

    import tempfile  # each run its own folder, as Hydra gives each job one

    return run_scenario(build_scenario(compose_config(overrides), tempfile.mkdtemp(prefix="fedpriv-smoke-")))


def run_smoke(changes: dict[str, str] | None = None, *, fresh: bool = False):
    """Runs the smoke config with ``changes``; identical configs share one run unless ``fresh``."""
    overrides = tuple(sorted(smoke_overrides(changes)))  # one run per config, whatever the order
    if fresh:
        return _run_cached.__wrapped__(overrides)
    return _run_cached(overrides)


def cli_command(*arguments: str, cache_dir: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """``python experiments/run.py ARGUMENTS`` and its environment.

    ``cache_dir``: a persistent JAX compilation cache shared by the CLI runs of a session
    (compiled programs are reused; the numbers are the same).
    """
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "JAX_PLATFORMS": "cpu"}
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return [sys.executable, str(RUN), *arguments], env


def run_script(script: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True,
                          timeout=120, cwd=REPO.parent)


# -- files the file-backed data presets read -------------------------------------------------

DICOM_CLASSES = ("cyst", "nodule")
DICOM_COPIES = 6
NPZ_TRAIN_RECORDS = 40


@pytest.fixture(scope="session")
def dicom_folder(tmp_path_factory) -> Path:
    """pydicom's CT_small.dcm, copied into two class subfolders (ImageFolder layout)."""
    import pydicom.data

    source = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    root = tmp_path_factory.mktemp("dicom") / "hospital_ct"
    for class_name in DICOM_CLASSES:
        (root / class_name).mkdir(parents=True)
        for copy in range(DICOM_COPIES):
            shutil.copy(source, root / class_name / f"slice_{copy:02d}.dcm")
    return root


@pytest.fixture(scope="session")
def medmnist_file(tmp_path_factory) -> Path:
    """A small MedMNIST-format npz: 28x28 uint8 images, [N, 1] labels in 3 classes."""
    generator = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("medmnist") / "tinymnist.npz"
    labels = np.arange(NPZ_TRAIN_RECORDS) % 3
    images = generator.integers(0, 64, (NPZ_TRAIN_RECORDS, 28, 28)).astype(np.uint8)
    images[:, 8:20, 8:20] += (60 * (1 + labels))[:, None, None].astype(np.uint8)  # class-dependent square
    np.savez(path, train_images=images, train_labels=labels[:, None].astype(np.int64),
             test_images=images[:6], test_labels=labels[:6, None].astype(np.int64))
    return path


@pytest.fixture(scope="session")
def tabular_csv(tmp_path_factory) -> tuple[Path, Path]:
    """A small CSV table (48 rows) and its column spec: two numeric columns, one categorical, a label."""
    generator = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("table")
    rows = ["age,sbp,smoker,outcome"] + [f"{generator.integers(20, 90)},{generator.integers(95, 180)},"
                                          f"{generator.choice(['yes', 'no'])},{generator.choice(['good', 'poor'])}"
                                          for _ in range(48)]
    (folder / "table.csv").write_text("\n".join(rows) + "\n")
    (folder / "spec.yaml").write_text(
        "label: outcome\ncolumns:\n  - {name: age, type: numeric, range: [18, 100]}\n"
        "  - {name: sbp, type: numeric, range: [80, 200]}\n  - {name: smoker, type: categorical, "
        "categories: ['yes', 'no']}\n")
    return folder / "table.csv", folder / "spec.yaml"


@pytest.fixture(scope="session")
def data_paths(dicom_folder, medmnist_file, tabular_csv) -> dict[str, dict[str, str]]:
    """The extra overrides each file-backed data preset needs."""
    return {"dicom_folder": {"data.cohort.path": str(dicom_folder)},
            "medmnist_npz": {"data.cohort.path": str(medmnist_file)},
            "tabular_csv": {"data.cohort.path": str(tabular_csv[0]), "data.cohort.spec": str(tabular_csv[1])}}


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if training or the attack starts: errors must come before compute."""
    import fedpriv.scenario
    import fedpriv.scenario_federation

    def refuse(*args, **kwargs):
        raise AssertionError("compute started: the error should have been raised before training")

    monkeypatch.setattr(fedpriv.scenario_federation, "train", refuse)
    monkeypatch.setattr(fedpriv.scenario, "attack_stage", refuse)


# -- the real CLI, run in the background -------------------------------------------------------

CLI_TEST_FILE = "test_run_cli.py"
SWEEP = ("defense=none,dp_sgd", "privacy.target_epsilon=1,8")
CONVNET_CHANGES = {"model": "convnet", "model.width": "2"}
FAILING_SWEEP = ("privacy.target_epsilon=-1,3",)  # job 0 fails validation, job 1 must still run


class CliRuns:
    """The session's runs of ``experiments/run.py``, one after another in a background thread.

    They start when the first test of this folder starts (if CLI tests are selected), so
    the subprocesses use the second core while the in-process tests use the first; a CLI
    test waits only for the run it reads.
    """

    def __init__(self, root: Path):
        self.root = root
        self.run_dir, self.sweep_dir, self.failing_sweep_dir = root / "run", root / "sweep", root / "failing_sweep"
        self.convnet_dir = root / "convnet"
        self.arguments = {
            "run": (*smoke_overrides(), f"hydra.run.dir={self.run_dir}"),
            "sweep": ("-m", *SWEEP, *smoke_overrides(), f"hydra.sweep.dir={self.sweep_dir}"),
            "failing_sweep": ("-m", *FAILING_SWEEP, *smoke_overrides({"defense": "dp_sgd", "attack": "none"}),
                              f"hydra.sweep.dir={self.failing_sweep_dir}"),
            # The default model under attack, with impl=auto (host loops on CPU).
            "convnet": (*smoke_overrides(CONVNET_CHANGES), f"hydra.run.dir={self.convnet_dir}"),
        }
        self._results: dict[str, object] = {}
        self._done = {name: threading.Event() for name in self.arguments}
        self._thread = threading.Thread(target=self._work, name="fedpriv-cli-runs", daemon=True)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._stopped = False

    def start(self) -> CliRuns:
        self._thread.start()
        return self

    def _work(self) -> None:
        for name, arguments in self.arguments.items():
            try:
                # From outside the repository: run.py must find conf/ by itself.
                command, env = cli_command(*arguments, cache_dir=self.root / "jax_cache")
                with self._lock:
                    if self._stopped:
                        raise RuntimeError("the session ended before this run started")
                    self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                     text=True, cwd=REPO.parent, env=env)
                stdout, stderr = self._process.communicate(timeout=600)
                self._results[name] = subprocess.CompletedProcess(command, self._process.returncode, stdout, stderr)
            except Exception as error:  # noqa: BLE001 - handed to the test that reads it
                self._results[name] = error
            self._done[name].set()

    def stop(self) -> None:
        """Ends the run still going when the session ends early (-x, Ctrl-C)."""
        with self._lock:
            self._stopped = True
            if self._process is not None and self._process.poll() is None:
                self._process.kill()

    def result(self, name: str) -> subprocess.CompletedProcess:
        assert self._done[name].wait(timeout=900), f"the CLI run {name!r} did not finish"
        result = self._results[name]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory):
    runs = CliRuns(tmp_path_factory.mktemp("cli")).start()
    yield runs
    runs.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_cli_runs_early(request):
    if any(CLI_TEST_FILE in item.nodeid for item in request.session.items):
        request.getfixturevalue("cli_runs")
