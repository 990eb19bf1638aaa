"""Runs one fedpriv scenario from the composed Hydra config.

    python experiments/run.py                                  # the default experiment
    python experiments/run.py -m defense=none,dp_sgd privacy.target_epsilon=1,3,8
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from experiments.build import build_distributed, build_scenario, flat_config, run_fingerprint  # noqa: E402
from experiments.outputs import (completed_metrics, config_digest, git_sha, objective_key,  # noqa: E402
                                 results_table, save_reconstruction_grid, versions, write_json_atomically,
                                 write_leak_report)
from fedpriv.federated.distributed import initialize_distributed, is_lead_process  # noqa: E402
from fedpriv.scenario import run_scenario  # noqa: E402

logger = logging.getLogger("fedpriv.run")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    # JAX logs at INFO that it found no TPU on every CPU or GPU machine: not news to a user.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    digest = config_digest(run_fingerprint(cfg))
    if (done := completed_metrics(output_dir, digest)) is not None:  # a rerun sweep skips finished jobs
        print(f"complete, skipped: {output_dir / 'metrics.json'} holds this config (delete it to run again)")
        return _objective(cfg, done)
    try:
        initialize_distributed(build_distributed(cfg))  # a multi-host run joins before JAX touches a device
        scenario = build_scenario(cfg, str(output_dir))  # every config error surfaces here, before compute
        result = run_scenario(scenario)
    except Exception as error:
        # The job's own folder records the failure; other sweep jobs' results are untouched.
        write_json_atomically(output_dir / "error.json", {"error": repr(error), "traceback": traceback.format_exc(),
                                                          "finished_at": time.time()})
        line = config_error_line(error)
        if line is not None and os.environ.get("HYDRA_FULL_ERROR") != "1":
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise SystemExit(line) from None  # one line naming the field; the traceback is in error.json
            print(line, file=sys.stderr)  # a sweep goes on to its next job (an exit would end it)
        raise
    # The option picked in each config group (choice.attack = cocktail_party, ...): a sweep's rows name their presets.
    choices = {f"choice.{group}": option for group, option in HydraConfig.get().runtime.choices.items()
               if not group.startswith("hydra") and option is not None}
    metrics = {**flat_config(cfg), **choices, **result.metrics, **versions(), "git_sha": git_sha(),
               "config_digest": digest}
    if not is_lead_process():  # every process of a multi-host run holds the same results; process 0 writes them
        return _objective(cfg, metrics)
    if result.truth is not None:
        save_reconstruction_grid(output_dir / "reconstruction.png", result.truth, result.reconstructed,
                                 title=f"{cfg.attack.config._target_.rsplit('.', 1)[-1].removesuffix('Config')}"
                                       f"\nvs defense={cfg.defense.name}")
    if result.leaks:
        write_leak_report(output_dir / "leak.md", result.leaks, metrics["attack.kind"])
    write_json_atomically(output_dir / "metrics.json", metrics)
    (output_dir / "error.json").unlink(missing_ok=True)  # this run supersedes an earlier failure in the folder
    print(results_table(metrics))
    print(f"outputs: {output_dir}")
    return _objective(cfg, metrics)


def config_error_line(error: BaseException) -> str | None:
    """``error: FIELD: what is wrong`` for a config error (a ``ValueError``, possibly wrapped by
    Hydra's instantiation, which names the config node in ``full_key``); ``None`` otherwise."""
    cause = error
    while not isinstance(cause, ValueError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if not isinstance(cause, ValueError):
        return None
    node = re.search(r"full_key: (\S+)", str(error))
    if node is None or node.group(1) in str(cause):
        return f"error: {cause}"
    return f"error: {node.group(1)}: {cause}"


def _objective(cfg: DictConfig, metrics: dict) -> float:
    try:
        return float(metrics.get(objective_key(cfg.objective, metrics), float("nan")))
    except (TypeError, ValueError):  # a string such as an attack status
        return float("nan")


if __name__ == "__main__":
    main()
