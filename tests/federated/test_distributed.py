"""Multi-host runs through ``jax.distributed``: settings, the one-process no-op, two local processes."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fedpriv.federated import DistributedConfig, initialize_distributed
from fedpriv.federated.distributed import is_lead_process

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("settings", "message"), [
    ({"enabled": "yes"}, "impl.distributed.enabled must be true or false"),
    ({"coordinator_address": "10.0.0.1:1234"}, r"impl.distributed.enabled is false but \['coordinator_address'\]"),
    ({"enabled": True, "coordinator_address": "10.0.0.1"}, "impl.distributed.coordinator_address must be 'host:port'"),
    ({"enabled": True, "num_processes": 0}, "impl.distributed.num_processes must be an integer >= 1"),
    ({"enabled": True, "num_processes": 2, "process_id": 2},
     r"impl.distributed.process_id must be an integer in \[0, num_processes=2\)"),
])
def test_bad_distributed_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        DistributedConfig(**settings)


def test_one_process_joins_nothing(monkeypatch):
    assert initialize_distributed(DistributedConfig()) is False
    assert initialize_distributed(DistributedConfig(enabled=True, num_processes=1, process_id=0)) is False
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # srun with one task
    assert initialize_distributed(DistributedConfig(enabled=True)) is False
    assert not jax.distributed.is_initialized()
    assert is_lead_process()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_the_loopback_coordinator_equal_one_process(tmp_path):
    # Each process: one CPU device, so the mesh spans both processes; five hospitals, three rows each once padded.
    port = _free_port()
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    environment.pop("XLA_FLAGS", None)
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "tests.federated.distributed_worker", str(index), "2",
                                 str(port), str(tmp_path)], cwd=REPO, env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for index in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    wall_seconds = time.perf_counter() - started
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    print(f"two-process run: {wall_seconds:.1f} s wall")

    from tests.federated.distributed_worker import run_federation
    single = run_federation("vmap")  # this process: one device, no jax.distributed
    for index in range(2):
        result = np.load(tmp_path / f"process_{index}.npz")
        assert bool(result["joined"]) and int(result["process_count"]) == 2 and int(result["devices"]) == 2
        assert int(result["local_rows"]) == 3  # its own half of the six padded client rows
        for name, value in single.items():
            np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
