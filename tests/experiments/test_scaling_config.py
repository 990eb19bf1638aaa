"""The scaling knobs of ``conf/impl``: device count, client chunks, multi-host settings (DESIGN §5).

All checks here build configs only (no compute): every mistake surfaces in ``build_scenario``
or ``build_distributed`` and names the knob.
"""

import re

import jax
import pytest

from experiments.build import build_distributed, build_scenario, resolve_impl
from fedpriv.compilation import choose_compilation
from fedpriv.federated import ClientPlacement, DistributedConfig
from tests.experiments.conftest import compose_config, compose_smoke
from tests.experiments.test_bad_input import root_cause


def test_a_device_count_asks_auto_for_the_sharded_backend():
    scenario = build_scenario(compose_smoke({"impl.num_devices": "1", "impl.client_chunk": "2"}))
    assert scenario.federation.backend == "sharded"
    assert scenario.federation.placement == ClientPlacement(num_devices=1, client_chunk=2)
    assert build_scenario(compose_smoke({"impl": "sharded"})).federation.backend == "sharded"
    # Without one, auto keeps its measured single-device choices.
    assert choose_compilation("convnet", "cpu").client_backend == "loop"
    assert choose_compilation("mlp", "cpu").client_backend == "vmap"
    assert choose_compilation("convnet", "cpu", num_devices=4).client_backend == "sharded"
    assert choose_compilation("convnet", "cpu", num_devices=4).attack_loop == "host"
    assert resolve_impl(compose_smoke({"model": "convnet"})).impl.client_backend == "loop"


@pytest.mark.parametrize(("changes", "message"), [
    ({"impl": "sharded", "impl.num_devices": str(jax.device_count() + 7)},
     rf"impl.num_devices. must be null .all. or in \[1, {jax.device_count()}\]"),
    ({"impl": "sharded", "impl.num_devices": "0"}, "placement.num_devices must be an integer >= 1"),
    ({"impl": "vmap", "impl.num_devices": "2"}, r"impl.num_devices. applies to the 'sharded' client backend only"),
    ({"impl": "loop", "impl.client_chunk": "8"}, r"impl.client_chunk. applies to the 'vmap' and 'sharded'"),
])
def test_bad_scaling_knobs_are_refused_before_compute(changes, message):
    with pytest.raises(Exception) as caught:
        build_scenario(compose_smoke(changes))
    assert re.search(message, str(root_cause(caught.value))), caught.value


def test_multi_host_settings_come_from_impl_distributed():
    assert build_distributed(compose_smoke()) == DistributedConfig()
    explicit = build_distributed(compose_smoke({
        "impl.distributed.enabled": "true", "impl.distributed.coordinator_address": "10.1.2.3:1234",
        "impl.distributed.num_processes": "4", "impl.distributed.process_id": "3"}))
    assert explicit == DistributedConfig(enabled=True, coordinator_address="10.1.2.3:1234", num_processes=4,
                                         process_id=3)
    with pytest.raises(ValueError, match=r"impl.distributed.enabled is false but \['process_id'\]"):
        build_distributed(compose_smoke({"impl.distributed.process_id": "1"}))


def test_scaling_knobs_stay_out_of_run_names():
    excluded = set(compose_config([], hydra_node=True).hydra.job.config.override_dirname.exclude_keys)
    assert {"impl.num_devices", "impl.client_chunk", "impl.distributed.enabled",
            "impl.distributed.coordinator_address", "impl.distributed.num_processes",
            "impl.distributed.process_id"} <= excluded
