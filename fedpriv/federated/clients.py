"""Runs the client function for every client of a round (DESIGN §3.3, §5).

Backends give the same numbers; which is fastest depends on model family and platform:
- ``"vmap"``: one batched program over the client axis. Best for MLPs and embedding
  models, and on accelerators.
- ``"loop"``: the client function is jitted once and called per client from the host.
  On XLA's CPU backend, convolution gradients under ``vmap`` leave the fast path
  (jax-ml/jax #12868), so for ConvNets on CPU this is many times faster.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedpriv.federated.local_sgd import ClientReport, ClientUpdate
from fedpriv.typing import ClientData, Params

CLIENT_BACKENDS = ("vmap", "loop")

# run(params, client_data, client_keys [C], noise_multiplier=None, per_client=None)
#   -> (updates with leaves [C, ...], ClientReport with leaves [C, ...])
ClientRunner = Callable[[Params, ClientData, jax.Array], tuple[Params, ClientReport]]


def for_each_client(client_update: ClientUpdate, backend: str) -> ClientRunner:
    """Maps ``client_update`` over the client axis of a round's ``ClientData``.

    Non-participating clients (``client_mask == 0``) get an all-zero update and report,
    under both backends. ``per_client`` is an optional pytree with leaves ``[C, ...]``
    (e.g. each hospital's private head) passed, sliced, as the client function's last
    argument.

    Args:
      client_update: the pure client function of ``make_client_update``.
      backend: one of ``CLIENT_BACKENDS``.

    Returns:
      ``run(params, client_data, client_keys)``; with ``"vmap"`` it is a traceable
      function meant to sit inside the jitted round, with ``"loop"`` a host function.
    """
    if backend == "vmap":
        def run(params, client_data: ClientData, client_keys, noise_multiplier=None, per_client=None):
            arguments = (params, client_data.examples, client_data.example_mask, client_keys, noise_multiplier)
            in_axes = (None, 0, 0, 0, None)
            if per_client is not None:
                arguments, in_axes = arguments + (per_client,), in_axes + (0,)
            updates, reports = jax.vmap(client_update, in_axes=in_axes)(*arguments)
            return _zero_absent(updates, reports, client_data.client_mask)
        return run

    if backend == "loop":
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

    raise ValueError(f"client backend must be one of {CLIENT_BACKENDS}, got {backend!r}")


def _zero_absent(updates, reports, client_mask):
    def mask_leaf(leaf):
        shape = (-1,) + (1,) * (leaf.ndim - 1)
        return jnp.where(client_mask.reshape(shape) > 0, leaf, jnp.zeros_like(leaf))
    return jax.tree_util.tree_map(mask_leaf, updates), jax.tree_util.tree_map(mask_leaf, reports)
