"""Shared pieces of the Hydra/experiments tests: the conf folder, tiny smoke configs, files.

Every run here is a smoke run: 32 records of 16x16, two hospitals, two rounds, three attack
iterations, an MLP unless the test is about another model. Configs are composed in-process
with ``hydra.compose`` and run through ``build_scenario`` + ``run_scenario``; only the CLI
tests start ``experiments/run.py`` in a subprocess.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

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
SMOKE_ATTACK = {"attack.config.iterations": "3"}


def group_options(group: str) -> list[str]:
    """The options of a config group, from the YAML files in its folder (new files are covered)."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def groups() -> list[str]:
    return sorted(path.name for path in CONF.iterdir() if path.is_dir() and any(path.glob("*.yaml")))


def compose_config(overrides: list[str] | tuple[str, ...] = (), *, hydra_node: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_node)


def smoke_overrides(changes: dict[str, str] | None = None) -> list[str]:
    """``SMOKE`` with ``changes`` applied (a key in both takes the value of ``changes``)."""
    merged = {**SMOKE, **(changes or {})}
    if compose_config([f"{key}={value}" for key, value in merged.items()]).attack.config is not None:
        merged = {**SMOKE, **SMOKE_ATTACK, **(changes or {})}
    return [f"{key}={value}" for key, value in merged.items()]


def compose_smoke(changes: dict[str, str] | None = None) -> DictConfig:
    return compose_config(smoke_overrides(changes))


@functools.lru_cache(maxsize=None)
def _run_cached(overrides: tuple[str, ...]):
    from experiments.build import build_scenario
    from fedpriv.scenario import run_scenario

    return run_scenario(build_scenario(compose_config(overrides)))


def run_smoke(changes: dict[str, str] | None = None, *, fresh: bool = False):
    """Runs the smoke config with ``changes``; identical configs share one run unless ``fresh``."""
    overrides = tuple(smoke_overrides(changes))
    if fresh:
        return _run_cached.__wrapped__(overrides)
    return _run_cached(overrides)


def run_cli(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python experiments/run.py ARGUMENTS`` from outside the repository (it must find conf/ itself)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(RUN), *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO.parent, env=env)


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
def data_paths(dicom_folder, medmnist_file) -> dict[str, dict[str, str]]:
    """The extra overrides each file-backed data preset needs."""
    return {"dicom_folder": {"data.cohort.path": str(dicom_folder)},
            "medmnist_npz": {"data.cohort.path": str(medmnist_file)}}


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if training or the attack starts: errors must come before compute."""
    import fedpriv.scenario

    def refuse(*args, **kwargs):
        raise AssertionError("compute started: the error should have been raised before training")

    monkeypatch.setattr(fedpriv.scenario, "train", refuse)
    monkeypatch.setattr(fedpriv.scenario, "invert_gradients", refuse)
