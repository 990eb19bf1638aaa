"""The client axis on a device mesh: which devices, how rounds are padded and placed (DESIGN §3.3, §5).

The ``sharded`` client backend spreads a round's clients over a 1-D
``jax.sharding.Mesh``. A mesh axis can only split an array axis it divides, so a round is
padded with *absent* clients (``client_mask`` 0, all-zero data) up to a multiple of the
device count, and the padding is dropped again before anything aggregates. Absent clients
contribute exactly zero to every update and count, so the padding changes no number.

On several processes (``jax.distributed``) the mesh spans every process's devices and each
process feeds only the hospitals whose rows live on its own devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedpriv.typing import ClientData

CLIENT_AXIS = "clients"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientPlacement:
    """How many devices and how many clients at a time (``impl`` knobs: same numbers, other speed and memory).

    Attributes:
      num_devices: devices of the ``sharded`` backend's mesh, the first ``num_devices`` of
        ``jax.devices()``; ``None``: all of them (every process's, in a multi-process run).
      client_chunk: clients run together (vmapped) at a time, the rest following through
        ``lax.map``: bounds the memory of a round to one chunk's activations. ``None``: all
        the clients (on each device) at once. For the ``vmap`` and ``sharded`` backends;
        ``loop`` already runs one client at a time.
    """

    num_devices: int | None = None
    client_chunk: int | None = None

    def __post_init__(self):
        for name in ("num_devices", "client_chunk"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"placement.{name} must be an integer >= 1 or None, got {value!r}")

    def check_backend(self, backend: str) -> None:
        """Refuses knobs the backend would silently ignore."""
        if self.num_devices is not None and backend != "sharded":
            raise ValueError(f"placement.num_devices (impl.num_devices) applies to the 'sharded' client backend "
                             f"only, got backend {backend!r} with num_devices={self.num_devices}; "
                             "set impl.client_backend=sharded or num_devices to null")
        if self.client_chunk is not None and backend not in ("vmap", "sharded"):
            raise ValueError(f"placement.client_chunk (impl.client_chunk) applies to the 'vmap' and 'sharded' "
                             f"client backends, got backend {backend!r} (which runs one client at a time); "
                             "set client_chunk to null")

    def check_devices(self) -> None:
        """Refuses more devices than JAX has, or a part of a multi-process run's devices.

        Touches the JAX backend, so a multi-process run calls it after ``jax.distributed``
        has been initialised."""
        if self.num_devices is None:
            return
        available = jax.device_count()
        if self.num_devices > available:
            raise ValueError(f"placement.num_devices (impl.num_devices) must be null (all) or in [1, {available}] "
                             f"(the devices JAX sees), got {self.num_devices}")
        if jax.process_count() > 1 and self.num_devices != available:
            raise ValueError(f"placement.num_devices (impl.num_devices) must be null or {available} in a "
                             f"{jax.process_count()}-process run (the mesh spans every process), "
                             f"got {self.num_devices}")


def client_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with one ``"clients"`` axis over the first ``num_devices`` devices (``None``: all)."""
    ClientPlacement(num_devices=num_devices).check_devices()
    devices = jax.devices()[: num_devices or jax.device_count()]
    return Mesh(np.asarray(devices), (CLIENT_AXIS,))


def padded_count(count: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds ``count`` clients."""
    return -(-count // mesh.size) * mesh.size


def pad_clients(tree, count: int):
    """Appends absent clients to every ``[C, ...]`` leaf of ``tree`` until it has ``count`` rows.

    Data, masks and counts are padded with zeros (absent); ``ClientData.record_ids`` with
    -1 (no record); a key array with copies of its first key (an absent client's output
    is zeroed, so its key is never seen)."""
    def pad(node):
        if isinstance(node, ClientData):
            padded = jax.tree_util.tree_map(lambda leaf: _pad_rows(leaf, count), node)
            return dataclasses.replace(padded, record_ids=_pad_rows(node.record_ids, count, fill=-1))
        return _pad_rows(node, count)
    return jax.tree_util.tree_map(pad, tree, is_leaf=lambda node: isinstance(node, ClientData))


def _pad_rows(leaf, count: int, fill=0):
    missing = count - leaf.shape[0]
    if missing == 0:
        return leaf
    if _is_key(leaf):
        return jnp.concatenate([leaf, leaf[jnp.zeros(missing, jnp.int32)]])
    xp = np if isinstance(leaf, np.ndarray) else jnp  # host data stays on the host
    return xp.concatenate([leaf, xp.full((missing, *leaf.shape[1:]), fill, leaf.dtype)])


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def take_clients(tree, count: int):
    """The first ``count`` clients of every ``[C, ...]`` leaf (drops the padding)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[:count], tree)


def shard_clients(tree, count: int, mesh: Mesh):
    """Pads ``tree``'s ``count`` clients for ``mesh`` and places each device's rows on it.

    Every process holds the round's host data (it is built from the run seed) and
    transfers only the rows its own devices hold (``jax.make_array_from_callback``)."""
    on_host = jax.tree_util.tree_map(lambda leaf: leaf if _is_key(leaf) else np.asarray(leaf), tree)
    padded = pad_clients(on_host, padded_count(count, mesh))
    sharding = NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))
    return jax.tree_util.tree_map(lambda leaf: _global_array(leaf, sharding), padded)


def replicate(tree, mesh: Mesh):
    """``tree`` on every device of ``mesh`` (the round's params, noise and server states)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda leaf: _global_array(leaf, sharding), tree)


def _global_array(leaf, sharding: NamedSharding):
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf  # already placed (e.g. last round's server state)
    if _is_key(leaf):
        data = _global_array(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = leaf if isinstance(leaf, np.ndarray) else np.asarray(jnp.asarray(leaf))
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)  # float64 -> float32, as jit does
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather_clients(tree, count: int):
    """Per-client results spread over the mesh as one local array each, padding dropped.

    Each process gets every client's row (across processes through
    ``multihost_utils.process_allgather``), as the training loop's observers and the
    attacker read any hospital's update."""
    def gather(leaf):
        if not isinstance(leaf, jax.Array) or len(leaf.sharding.device_set) == 1:
            return leaf[:count]
        rows = np.asarray(leaf) if leaf.is_fully_addressable else multihost_utils.process_allgather(leaf, tiled=True)
        return jnp.asarray(rows[:count])
    return jax.tree_util.tree_map(gather, tree)


def to_local(tree):
    """Each replicated leaf as this process's own copy on one of its devices.

    The round's server-side results (params, optimizer and stage states) are replicated
    over the mesh; later host code (the next round's placement, checkpoints, the attack,
    metrics) then works with ordinary single-device arrays, and a multi-process run reads
    them without gathering."""
    def local(leaf):
        if isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1 and leaf.is_fully_replicated:
            return leaf.addressable_shards[0].data
        return leaf
    return jax.tree_util.tree_map(local, tree)
