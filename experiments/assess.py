"""``fedpriv assess``: a gradient-leakage assessment a hospital runs on its own model.

    fedpriv assess                        # the built-in CT cohort, the default battery and grid
    fedpriv assess --quick                # = assess=quick: one attack, two private settings
    fedpriv assess model=mlp data=dicom_folder data.cohort.path=/scans algorithm.local_steps=4
    python -m experiments.assess ...      # the same without the console script

A Hydra app on ``conf/assess.yaml``: every field of ``conf/config.yaml`` is the user's federation
(``defense`` is the stack they deploy), ``assess`` picks the battery of attacks that fit the data
kind, the DP-SGD grid, the thresholds and the budget. Each (attack, setting) is one job of
``experiments/run.py`` in ``OUTPUT/jobs/NAME`` run through ``experiments.figure.run_jobs`` (one
process, jobs already complete skipped), described by a generated config ``OUTPUT/jobs_conf/
assess_job/NAME.yaml``. Every job is composed and validated before any compute; one that the
library refuses (e.g. iDLG labels with local steps > 1) is listed in the report, not run.
The conclusions (``experiments.assessment``) go to ``OUTPUT/report.md`` and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from experiments.assessment import Axis, Point, Threshold  # noqa: E402
from experiments.assessment_report import write_report  # noqa: E402
from experiments.build import build_scenario  # noqa: E402
from experiments.figure import run_jobs_with_bar  # noqa: E402

# Overrides the assessment decides per job (never passed to every job as typed).
PER_JOB_GROUPS = ("attack", "defense")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """One (attack, setting) run: its name (= folder and config option) and the config it adds."""

    name: str
    attack: str
    role: str
    setting: str
    attack_option: str
    defense_option: str
    values: dict
    coordinates: dict


def axes_of(assess: DictConfig) -> list[Axis]:
    """The grid axes that have values; refuses a grid without any private setting."""
    axes = [Axis(name=str(a.name), key=str(a.key), stronger=str(a.stronger), values=tuple(float(v) for v in a["values"]))
            for a in assess.grid.axes if len(a["values"]) > 0]
    if not axes:
        raise ValueError("assess.grid.axes has no values: the assessment needs at least one private (DP-SGD) "
                         "setting; give e.g. assess.grid.axes.0.values=[1.0,8.0]")
    return axes


def data_kind(cfg: DictConfig) -> str:
    kinds = cfg.assess.data_kinds
    kind = str(cfg.data.cohort.kind)
    if kind not in kinds or str(kinds[kind]) not in cfg.assess.batteries:
        raise ValueError(f"data.cohort.kind={kind!r} has no attack battery; kinds with one: {sorted(kinds)} "
                         "(assess.data_kinds, assess.batteries)")
    return str(kinds[kind])


def split_overrides(task: list[str], axes: list[Axis]) -> tuple[list[str], dict, dict]:
    """The user's overrides as (passed to every job, defense values for the stack job, attack and
    grid-axis values for the jobs that keep them). Group choices of attack/defense are read
    from Hydra's choices instead."""
    axis_keys = {axis.key for axis in axes}
    passthrough, defense, kept = [], {}, {}
    for override in task:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.split(".")[0] in ("assess", "hydra") or key in PER_JOB_GROUPS:
            continue
        if key.startswith("defense."):
            defense[key] = value
        elif key.startswith("attack.") or key in axis_keys:
            kept[key] = value
        else:
            passthrough.append(override)
    return passthrough, defense, kept


def grid_points(axes: list[Axis], reference: dict) -> list[dict]:
    """The reference setting and each axis value varied alone around it (no duplicates)."""
    points = [dict(reference)]
    for axis in axes:
        for value in axis.values:
            point = {**reference, axis.key: value}
            if point not in points:
                points.append(point)
    return points


def reference_setting(cfg: DictConfig, axes: list[Axis]) -> dict:
    """The grid's reference point: ``assess.grid.reference``, else the user's own value of each axis."""
    reference = {}
    for axis in axes:
        value = cfg.assess.grid.reference.get(axis.key, OmegaConf.select(cfg, axis.key))
        if value is None:
            raise ValueError(f"assess.grid.reference needs a value for {axis.key} (the config has none)")
        reference[axis.key] = float(value)
    return reference


def setting_label(axes: list[Axis], point: dict) -> str:
    return "dp-" + "-".join(f"{axis.name}{point[axis.key]:g}".replace(".", "p") for axis in axes)


def plan_jobs(cfg: DictConfig, choices: dict, task: list[str]) -> tuple[list[Job], list[str]]:
    """Every (attack, setting) job and the overrides passed to all of them."""
    axes = axes_of(cfg.assess)
    kind = data_kind(cfg)
    passthrough, defense_values, kept = split_overrides(task, axes)
    reference = reference_setting(cfg, axes)
    user_axes = {key: value for key, value in kept.items() if key in reference}
    user_attack = {key: value for key, value in kept.items() if key.startswith("attack.")}
    settings = [("nonprivate", "nonprivate", "none", {key: v for key, v in user_axes.items()
                                                      if not key.startswith("defense.")}, {})]
    if choices["defense"] != "none" or defense_values:
        settings.append(("stack", f"stack-{choices['defense']}", choices["defense"],
                         {**user_axes, **defense_values}, {}))
    settings += [("grid", setting_label(axes, point), "dp_sgd", point, point) for point in grid_points(axes, reference)]
    jobs = [Job(name=f"{entry.name}--{label}", attack=str(entry.name), role=role, setting=label,
                attack_option=str(entry.attack), defense_option=defense,
                values={**OmegaConf.to_container(entry.set), **user_attack, **values}, coordinates=coordinates)
            for entry in cfg.assess.batteries[kind] for role, label, defense, values, coordinates in settings]
    return jobs, passthrough


def write_job_config(folder: Path, job: Job, values: dict) -> None:
    """``assess_job/NAME.yaml``: the job's group choices and values over the user's config."""
    header = ("# @package _global_\n# Generated by fedpriv assess for one job; see report.md.\ndefaults:\n"
              f"  - override /defense: {job.defense_option}\n  - override /attack: {job.attack_option}\n")
    body = OmegaConf.to_yaml(OmegaConf.from_dotlist([f"{key}={value}" for key, value in values.items()]))
    (folder / "assess_job").mkdir(parents=True, exist_ok=True)
    (folder / "assess_job" / f"{job.name}.yaml").write_text(header + ("" if body.strip() == "{}" else body))


def _compose(folder: Path, job: Job, passthrough: list[str]) -> DictConfig:
    overrides = [f"hydra.searchpath=[file://{folder}]", f"+assess_job={job.name}", *passthrough]
    return GlobalHydra.instance().hydra.compose_config(config_name="config", overrides=overrides,
                                                       run_mode=RunMode.RUN, with_log_configuration=False)


def prepare_job(folder: Path, job: Job, passthrough: list[str], budget: dict, user_keys: set) -> str:
    """Writes the job's config with the budget keys it has (and the user did not set), then
    builds it as ``run.py`` will; returns "" or why the library refuses it (before compute)."""
    write_job_config(folder, job, job.values)
    try:
        composed = _compose(folder, job, passthrough)
        extra = {key: value for key, value in budget.items()
                 if key not in user_keys and key not in job.values and OmegaConf.select(composed, key) is not None}
        write_job_config(folder, job, {**extra, **job.values})
        build_scenario(_compose(folder, job, passthrough))
    except Exception as error:  # noqa: BLE001 - a refused job is reported, the others still run
        return f"{type(error).__name__}: " + " ".join(str(error).split())  # one line, the cause included
    return ""


def run_planned(output_dir: Path, names: list[str], passthrough: list[str]) -> int:
    """Runs the jobs in one ``run.py -m`` process with a bar over the jobs; its log is jobs.log."""
    env = {**os.environ}
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(output_dir / "jax_cache"))  # DP jobs share programs
    overrides = [f"hydra.searchpath=[file://{output_dir / 'jobs_conf'}]", "+assess_job=" + ",".join(names),
                 *passthrough]
    return run_jobs_with_bar(output_dir / "jobs", overrides, len(names), description="assessment jobs",
                             log=output_dir / "jobs.log", subdir="${hydra:runtime.choices.assess_job}", env=env)


def collect_points(output_dir: Path, jobs: list[Job], refused: dict) -> list[Point]:
    points = []
    for job in jobs:
        folder = output_dir / "jobs" / job.name
        metrics, error = None, refused.get(job.name, "")
        if (folder / "metrics.json").exists():
            metrics = json.loads((folder / "metrics.json").read_text())
        elif not error:
            error = (json.loads((folder / "error.json").read_text()).get("error", "failed")
                     if (folder / "error.json").exists() else "did not run")
        points.append(Point(attack=job.attack, role=job.role, setting=job.setting, coordinates=job.coordinates,
                            metrics=metrics, source=f"jobs/{job.name}/metrics.json", error=error))
    return points


def assess(cfg: DictConfig, output_dir: Path, choices: dict, task: list[str]) -> Path | None:
    """Plans, validates, runs and reports; returns the HTML report (``None`` for
    ``assess.dry_run``, which stops after validation). Config errors come first."""
    started = time.monotonic()
    kind = data_kind(cfg)
    threshold = Threshold(metric=str(cfg.assess.thresholds[kind].metric), below=float(cfg.assess.thresholds[kind].below))
    jobs, passthrough = plan_jobs(cfg, choices, task)
    budget = OmegaConf.to_container(cfg.assess.budget)
    user_keys = {override.partition("=")[0].lstrip("+~") for override in task}
    refused = {job.name: why for job in jobs if (why := prepare_job(output_dir / "jobs_conf", job, passthrough,
                                                                     budget, user_keys))}
    runnable = [job.name for job in jobs if job.name not in refused]
    if not any(job.role == "grid" and job.name not in refused for job in jobs):
        raise ValueError("assess: every private (DP-SGD) job was refused before compute: "
                         + "; ".join(sorted(set(refused.values()))))
    if cfg.assess.dry_run:
        print("\n".join([f"planned {len(jobs)} jobs ({len(refused)} refused) in {output_dir / 'jobs_conf'}:",
                          *(f"  {job.name}: {refused.get(job.name) or 'ok'}" for job in jobs)]))
        return None
    if runnable:  # a failed job leaves error.json, which the report lists; the others still count
        run_planned(output_dir, runnable, passthrough)
    points = collect_points(output_dir, jobs, refused)
    axes = axes_of(cfg.assess)
    context = {"kind": kind, "threshold": threshold, "axes": axes, "points": points,
               "reference": reference_setting(cfg, axes), "stack": choices["defense"],
               "assessment": str(cfg.assess.name), "command": " ".join(["fedpriv assess", *task]),
               "seconds": time.monotonic() - started}
    return write_report(output_dir, context)


# An absolute path: the app runs as a module (fedpriv assess, python -m) as well as a script.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="assess")
def _app(cfg: DictConfig) -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    choices = dict(hydra_config.runtime.choices)
    try:
        report = assess(cfg, output_dir, choices, list(hydra_config.overrides.task))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if report is None:  # assess.dry_run
        return
    failed = sorted(path.parent.name for path in (output_dir / "jobs").glob("*/error.json"))
    if failed:
        print(f"warning: {len(failed)} job(s) failed ({', '.join(failed)}); the report lists why under Limits")
    print(f"report: {report} and {report.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> None:
    """``--quick`` is ``assess=quick``; everything else is a Hydra override."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0], *("assess=quick" if argument == "--quick" else argument for argument in arguments)]
    _app()


if __name__ == "__main__":
    main()
