"""Picks how client and attack loops are compiled, from measurements (DESIGN §5).

``"auto"`` in ``conf/impl/`` resolves here. Every choice gives the same numbers (tests
check each pair); only speed differs. The table is measured by
``scripts/benchmark_compilation.py`` on this project's CPU machines (2 cores, jax 0.10.2):
on XLA's CPU backend convolution gradients run several times slower under ``vmap`` and
inside ``lax.scan`` than as one jitted step called from the host (jax-ml/jax #12868),
while dense models batch well. Accelerators batch everything well.

Several devices do not change the CPU choice: forced host devices share the same cores.
``scripts/bench/federated_rounds_backends.py`` (default CT ConvNet, FedSGD batch 1):
100 clients 0.78 rounds/s ``loop``, 0.72 ``sharded`` over 4 host devices, 0.50 ``vmap``;
1,000 clients 0.073, 0.037, 0.023. ``sharded`` is chosen only when ``impl.num_devices``
asks for a mesh.
"""

from __future__ import annotations

import dataclasses

import jax

# Model families whose convolution gradients leave XLA's fast CPU path when batched or scanned.
CPU_HOST_LOOP_FAMILIES = ("convnet", "resnet")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompilationChoice:
    client_backend: str
    attack_loop: str
    attack_batching: str


def choose_compilation(model_name: str, platform: str | None = None, *,
                       num_devices: int | None = None) -> CompilationChoice:
    """The measured-fastest compilation for ``model_name`` on ``platform`` (default: JAX's).

    A device count (``impl.num_devices``) asks for the clients on a mesh of that many
    devices: only the ``sharded`` backend has one. Otherwise the choice stays on one device
    even where JAX sees several (forced host devices share the same CPU cores; see
    ``scripts/bench/federated_rounds_backends.py``)."""
    if num_devices is not None:
        batched = choose_compilation(model_name, platform)
        return dataclasses.replace(batched, client_backend="sharded")
    platform = platform or jax.default_backend()
    if platform == "cpu" and model_name in CPU_HOST_LOOP_FAMILIES:
        return CompilationChoice(client_backend="loop", attack_loop="host", attack_batching="loop")
    return CompilationChoice(client_backend="vmap", attack_loop="scan", attack_batching="vmap")
