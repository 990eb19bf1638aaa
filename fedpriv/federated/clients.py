"""Runs the client function for every client of a round (DESIGN §3.3, §5).

Backends give the same numbers; which is fastest depends on model family and platform:
- ``"vmap"``: one batched program over the client axis. Best for MLPs and embedding
  models, and on accelerators.
- ``"loop"``: the client function is jitted once and called per client from the host.
  On XLA's CPU backend, convolution gradients under ``vmap`` leave the fast path
  (jax-ml/jax #12868), so for ConvNets on CPU this is many times faster.
- ``"sharded"``: the client axis on a 1-D device mesh (``jax.shard_map``): each device
  runs the batched program on its own clients; what aggregates them afterwards is one
  cross-device reduction. Several accelerators, or several processes
  (``fedpriv.federated.distributed``).

``ClientPlacement.client_chunk`` bounds the memory of ``vmap`` and ``sharded``: clients
run in vmapped chunks that follow one another through ``lax.map``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from fedpriv.federated.client_mesh import (CLIENT_AXIS, ClientPlacement, client_mesh, pad_clients, padded_count,
                                           take_clients)
from fedpriv.federated.local_sgd import ClientReport, ClientUpdate
from fedpriv.typing import ClientData, Params

CLIENT_BACKENDS = ("vmap", "loop", "sharded")

# run(params, client_data, client_keys [C], noise_multiplier=None, per_client=None)
#   -> (updates with leaves [C, ...], ClientReport with leaves [C, ...])
ClientRunner = Callable[[Params, ClientData, jax.Array], tuple[Params, ClientReport]]


def for_each_client(client_update: ClientUpdate, backend: str,
                    placement: ClientPlacement = ClientPlacement()) -> ClientRunner:
    """Maps ``client_update`` over the client axis of a round's ``ClientData``.

    Non-participating clients (``client_mask == 0``) get an all-zero update and report,
    under every backend. ``per_client`` is an optional pytree with leaves ``[C, ...]``
    (e.g. each hospital's private head) passed, sliced, as the client function's last
    argument.

    Args:
      client_update: the pure client function of ``make_client_update``.
      backend: one of ``CLIENT_BACKENDS``.
      placement: the device count (``"sharded"``) and client chunk (``"vmap"``, ``"sharded"``).

    Returns:
      ``run(params, client_data, client_keys)``; with ``"vmap"`` and ``"sharded"`` it is a
      traceable function meant to sit inside the jitted round (``"sharded"``'s carries its
      ``mesh``), with ``"loop"`` a host function.

    Raises:
      ValueError: for an unknown backend, a knob the backend ignores, or more devices
        than JAX has.
    """
    if backend not in CLIENT_BACKENDS:
        raise ValueError(f"client backend must be one of {CLIENT_BACKENDS}, got {backend!r}")
    placement.check_backend(backend)
    if backend == "vmap":
        return _batched(client_update, placement.client_chunk)
    if backend == "sharded":
        return _sharded(client_update, client_mesh(placement.num_devices), placement.client_chunk)
    return _host_loop(client_update)


def _batched(client_update: ClientUpdate, client_chunk: int | None) -> ClientRunner:
    """All clients in one program: ``vmap``, or ``lax.map`` over vmapped chunks of ``client_chunk``."""
    def run(params, client_data: ClientData, client_keys, noise_multiplier=None, per_client=None):
        def one_client(client):
            examples, example_mask, key, own = client
            extra = () if own is None else (own,)
            return client_update(params, examples, example_mask, key, noise_multiplier, *extra)

        clients = (client_data.examples, client_data.example_mask, client_keys, per_client)
        if client_chunk is None:
            updates, reports = jax.vmap(one_client)(clients)
        else:
            updates, reports = jax.lax.map(one_client, clients, batch_size=client_chunk)
        return _zero_absent(updates, reports, client_data.client_mask)
    return run


def _sharded(client_update: ClientUpdate, mesh: Mesh, client_chunk: int | None) -> ClientRunner:
    """Each device runs the batched program on its own block of clients.

    The round is padded with absent clients to a multiple of the device count (a no-op
    when the caller already placed it so, as ``make_round`` does) and the padding is
    dropped from the result, so callers see exactly the ``[C, ...]`` of ``vmap``."""
    on_device = _batched(client_update, client_chunk)
    by_client, everywhere = PartitionSpec(CLIENT_AXIS), PartitionSpec()

    def per_device(params, clients, noise_multiplier):
        # The params arrive identical on every device; as such, their gradient would be summed
        # over devices (the transpose of the implicit broadcast). Each client's own gradient
        # is wanted, so the params are declared per-device before the clients differentiate.
        params = jax.lax.pcast(params, CLIENT_AXIS, to="varying")
        client_data, client_keys, per_client = clients
        return on_device(params, client_data, client_keys, noise_multiplier, per_client)

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(everywhere, by_client, everywhere), out_specs=by_client)

    def run(params, client_data: ClientData, client_keys, noise_multiplier=None, per_client=None):
        count = client_data.num_clients
        clients = pad_clients((client_data, client_keys, per_client), padded_count(count, mesh))
        return take_clients(sharded(params, clients, noise_multiplier), count)

    run.mesh = mesh
    return run


def _host_loop(client_update: ClientUpdate) -> ClientRunner:
    """One jitted client function called per participating client from the host."""
    jitted_update = jax.jit(client_update)

    def run(params, client_data: ClientData, client_keys, noise_multiplier=None, per_client=None):
        client_mask = jax.device_get(client_data.client_mask)
        updates, reports = [], []
        for index, present in enumerate(client_mask):
            examples = jax.tree_util.tree_map(lambda a: a[index], client_data.examples)
            extra = () if per_client is None else (jax.tree_util.tree_map(lambda a: a[index], per_client),)
            arguments = (params, examples, client_data.example_mask[index], client_keys[index],
                         noise_multiplier, *extra)
            if present:
                update, report = jitted_update(*arguments)
            else:  # same structure as a real client's, all zero, without running it
                update, report = jax.tree_util.tree_map(
                    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(jitted_update, *arguments))  # cached trace
            updates.append(update)
            reports.append(report)
        stack = lambda *leaves: jnp.stack(leaves)
        return jax.tree_util.tree_map(stack, *updates), jax.tree_util.tree_map(stack, *reports)

    run.jitted_client_update = jitted_update  # exposed so tests can count compilations
    return run


def _zero_absent(updates, reports, client_mask):
    def mask_leaf(leaf):
        shape = (-1,) + (1,) * (leaf.ndim - 1)
        return jnp.where(client_mask.reshape(shape) > 0, leaf, jnp.zeros_like(leaf))
    return jax.tree_util.tree_map(mask_leaf, updates), jax.tree_util.tree_map(mask_leaf, reports)
