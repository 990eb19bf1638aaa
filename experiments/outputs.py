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

from fedpriv.federated.checkpoints import fingerprint_sha256  # noqa: E402
from fedpriv.public import icd10  # noqa: E402

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


def config_digest(fingerprint: dict) -> str:
    """A short hash of a run's fingerprint (its resolved config without impl knobs): the key
    by which a sweep recognises a job it already finished."""
    return fingerprint_sha256(fingerprint)[:16]


def completed_metrics(output_dir: Path, digest: str) -> dict | None:
    """The ``metrics.json`` in ``output_dir`` when it is complete and of the config ``digest``.

    ``metrics.json`` is written atomically and last, so one that parses is a finished job; a
    killed job has none (or only ``error.json``) and runs again, as does a folder whose
    metrics came from another config.
    """
    try:
        metrics = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("config_digest") == digest else None


def write_json_atomically(path: Path, payload: dict) -> None:
    """Writes to a temporary file in the same folder, then renames: never a torn file."""
    payload = {key: _strict_json(value) for key, value in payload.items()}
    _write_text_atomically(path, json.dumps(payload, indent=1, sort_keys=True, default=str, allow_nan=False))


def save_reconstruction_grid(path: Path, truth: np.ndarray, reconstructed: np.ndarray, title: str = "") -> None:
    """Originals above, their matched reconstructions below: one column per victim's record.

    ``truth`` and ``reconstructed`` are ``[V, K, H, W, C]`` scored pairs; the all-zero pairs that
    pad a victim with fewer than ``K`` records are left out.
    """
    columns = [(victim, index) for victim in range(truth.shape[0]) for index in range(truth.shape[1])
               if np.any(truth[victim, index]) or np.any(reconstructed[victim, index])]
    figure, axes = plt.subplots(2, max(1, len(columns)), figsize=(max(3.2, 1.4 * len(columns)), 3.2),
                                squeeze=False)
    for column, (victim, index) in enumerate(columns):
        for row, images in enumerate((truth, reconstructed)):
            axis = axes[row, column]
            _show(axis, images[victim, index])
            if row == 0:
                axis.set_title(f"victim {victim}" + (f" #{index}" if truth.shape[1] > 1 else ""), fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=7)
    axes[1, 0].set_ylabel("reconstructed", fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _show(axis, image: np.ndarray) -> None:
    """One ``[H, W, C]`` image in [0, 1]: grey for one channel, colour for three."""
    image = np.clip(image, 0, 1)
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        axis.imshow(image[..., :3])
    axis.set_xticks([])
    axis.set_yticks([])


def write_leak_report(path: Path, leaks, kind: str) -> None:
    """``leak.md``: each victim's true and recovered codes or notes side by side, hits marked.

    Codes (``kind == "codes"``) are listed with their ICD-10-CM descriptions, a true code
    the attacker recovered marked **hit**, a recovered one no record held marked *false*;
    notes are shown in the scorer's pairing, the recovered note's words that the true
    note holds in bold. Written atomically like every other run output.
    """
    lines = [f"# What the attack recovered ({kind})", ""]
    for leak in leaks:
        lines += [f"## Hospital {leak.client}", ""]
        lines += _code_lines(leak) if kind == "codes" else _note_lines(leak)
        lines.append("")
    _write_text_atomically(path, "\n".join(lines))


def _code_lines(leak) -> list[str]:
    recovered, true = set(leak.recovered), set(leak.true)
    rows = ["| code | description | true | recovered |", "|---|---|---|---|"]
    for token in sorted(true | recovered):
        mark = "**hit**" if token in true and token in recovered else ("*false*" if token in recovered else "missed")
        rows.append(f"| {token} | {_describe(token)} | {'yes' if token in true else ''} | {mark} |")
    return rows


def _describe(token: str) -> str:
    try:
        return icd10.description(token)
    except ValueError:  # age, sex and lab tokens of the EHR vocabulary
        return ""


def _note_lines(leak) -> list[str]:
    rows = []
    for index, (true, recovered) in enumerate(zip(leak.true, leak.recovered)):
        words = set(true.split())
        marked = " ".join(f"**{word}**" if word in words else word for word in recovered.split())
        rows += [f"{index + 1}. true: {true}", f"   recovered: {marked or '(nothing)'}"]
    return rows


def _write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


# What a run's table shows: utility and privacy, then the headline of the attack's kind, then time.
LEADING_KEYS = ("utility.test_accuracy", "privacy.epsilon_rdp", "privacy.epsilon_pld", "privacy.noise_multiplier")
HEADLINE_KEYS = {
    "images": ("attack.psnr_db", "attack.psnr_db_median", "attack.ssim", "attack.recognisable_share",
               "attack.baseline_psnr_db", "attack.baseline_ssim", "attack.psnr_gain_db", "attack.records_missing",
               "attack.label_accuracy", "attack.reidentification_rate"),
    "codes": ("attack.code_f1", "attack.code_precision", "attack.code_recall", "attack.code_hierarchy_score",
              "attack.code_same_category", "attack.subtype_accuracy", "attack.count_token_accuracy",
              "attack.method"),
    "tokens": ("attack.token_term_f1", "attack.token_term_recall", "attack.token_rouge1_f1",
               "attack.token_rouge2_f1", "attack.token_order_accuracy", "attack.bag_f1", "attack.records_missing"),
    "tabular": ("attack.tabular_accuracy", "attack.tabular_categorical_accuracy", "attack.tabular_numeric_accuracy",
                "attack.entropy_categorical", "attack.records_scored", "attack.records_missing"),
}
TRAILING_KEYS = ("attack.status", "attack.seconds_per_iteration", "train.seconds", "attack.seconds",
                 "scenario.seconds")
# The sweep objective of ``objective: auto``: the attack kind's headline, or utility without an attack.
OBJECTIVES = {"images": "attack.psnr_db", "codes": "attack.code_f1", "tokens": "attack.token_term_f1",
              "tabular": "attack.tabular_accuracy"}
NO_ATTACK_OBJECTIVE = "utility.test_accuracy"


def objective_key(objective: str, metrics: dict) -> str:
    """The metric a sweep optimises: ``objective`` itself, or with ``"auto"`` the headline of
    the attack that ran (``attack.kind``) so an EHR sweep does not optimise an image PSNR."""
    if objective != "auto":
        return objective
    return OBJECTIVES.get(metrics.get("attack.kind"), NO_ATTACK_OBJECTIVE)


def results_table(metrics: dict) -> str:
    """A short two-column table of the headline numbers."""
    lines = [f"{'metric':<34} value", f"{'-' * 34} {'-' * 12}"]
    for key in (*LEADING_KEYS, *HEADLINE_KEYS.get(metrics.get("attack.kind"), ()), *TRAILING_KEYS):
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
            lines.append(f"{key:<34} {text}")
    return "\n".join(lines)
