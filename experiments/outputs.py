"""What a job leaves in its run directory: metrics.json, the reconstruction grid, a table."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PACKAGES = ("jax", "jaxlib", "flax", "optax", "dp-accounting", "numpy", "hydra-core")


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[f"versions.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[f"versions.{package}"] = "missing"
    return found


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _strict_json(value):
    """Strict JSON has no Infinity/NaN: non-finite floats become "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json_atomically(path: Path, payload: dict) -> None:
    """Writes to a temporary file in the same folder, then renames: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    payload = {key: _strict_json(value) for key, value in payload.items()}
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream, indent=1, sort_keys=True, default=str, allow_nan=False)
    os.replace(temporary, path)


def save_reconstruction_grid(path: Path, truth: np.ndarray, reconstructed: np.ndarray, title: str = "") -> None:
    """Two rows per victim: the true records, then their matched reconstructions."""
    victims, count = truth.shape[:2]
    figure, axes = plt.subplots(2 * victims, count, figsize=(max(3.2, 1.6 * count), 3.2 * victims), squeeze=False)
    for victim in range(victims):
        for index in range(count):
            for row, images, label in ((0, truth, "true"), (1, reconstructed, "reconstructed")):
                axis = axes[2 * victim + row, index]
                axis.imshow(np.clip(images[victim, index, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
                axis.set_xticks([])
                axis.set_yticks([])
                if index == 0:
                    axis.set_ylabel(f"victim {victim}\n{label}", fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


TABLE_KEYS = ("utility.test_accuracy", "privacy.epsilon_rdp", "privacy.epsilon_pld", "privacy.noise_multiplier",
              "attack.psnr_db", "attack.psnr_db_median", "attack.ssim", "attack.recognisable_share",
              "attack.baseline_psnr_db", "attack.baseline_ssim", "attack.psnr_gain_db",
              "attack.records_missing", "attack.label_accuracy", "attack.reidentification_rate",
              "attack.seconds_per_iteration", "train.seconds", "attack.seconds", "scenario.seconds")


def results_table(metrics: dict) -> str:
    """A short two-column table of the headline numbers."""
    lines = [f"{'metric':<34} value", f"{'-' * 34} {'-' * 12}"]
    for key in TABLE_KEYS:
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
            lines.append(f"{key:<34} {text}")
    return "\n".join(lines)
