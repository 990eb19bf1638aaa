"""FedSGD and FedAvg rounds: clients run, the server aggregates and steps (DESIGN §3.3).

Both algorithms are one round function: FedSGD is one local step with learning rate 1
(the update is minus the gradient), FedAvg is several local steps. The server treats
minus the weighted mean update as a pseudo-gradient for an optax optimizer, so
``sgd(1.0)`` is plain FedAvg and ``adam`` is FedAdam (Reddi et al. 2021, arXiv 2003.00295).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fedpriv.federated.clients import CLIENT_BACKENDS, for_each_client
from fedpriv.federated.local_sgd import ClientUpdate
from fedpriv.typing import ClientData, Params

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam")
WEIGHTINGS = ("examples", "uniform")


def make_server_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """The server optimizer applied to the pseudo-gradient ``-mean_update``."""
    if not learning_rate > 0:
        raise ValueError(f"server_learning_rate must be > 0, got {learning_rate!r}")
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}, got {name!r}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ServerState:
    params: Params
    optimizer_state: optax.OptState


def aggregate(updates: Params, weights: jax.Array) -> Params:
    """Weighted mean of per-client updates (leaves ``[C, ...]``); zero weight drops a client.

    A round where every weight is zero returns an all-zero update.
    """
    total = jnp.sum(weights)
    normalised = weights / jnp.where(total > 0, total, 1.0)
    return jax.tree_util.tree_map(lambda u: jnp.tensordot(normalised, u, axes=1), updates)


def client_weights(aux: dict[str, jax.Array], client_mask: jax.Array, weighting: str) -> jax.Array:
    """Aggregation weights: examples processed (FedAvg's n_k) or uniform over participants."""
    if weighting == "examples":
        return aux["num_examples"] * client_mask
    if weighting == "uniform":
        return client_mask
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


# round(state, client_data, client_keys, noise_multiplier=None) -> (new_state, updates, aux)
RoundFunction = Callable[..., tuple[ServerState, Params, dict[str, jax.Array]]]


def make_round(client_update: ClientUpdate, server_optimizer: optax.GradientTransformation, *,
               backend: str, weighting: str = "examples") -> RoundFunction:
    """Builds ``round(state, client_data, client_keys, noise_multiplier=None) -> (new_state, updates, aux)``.

    ``updates`` are the per-client updates the server received (leaves ``[C, ...]``),
    which is what an honest-but-curious server observes without secure aggregation.
    With ``backend="vmap"`` the whole round is one jitted call; with ``"loop"`` the
    client function is jitted once and the server step is a second jitted call.
    Neither recompiles after the first round as long as shapes stay fixed.
    """
    if backend not in CLIENT_BACKENDS:
        raise ValueError(f"client backend must be one of {CLIENT_BACKENDS}, got {backend!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    run_clients = for_each_client(client_update, backend)

    def server_step(state: ServerState, updates, aux, client_mask):
        mean_update = aggregate(updates, client_weights(aux, client_mask, weighting))
        pseudo_gradient = jax.tree_util.tree_map(jnp.negative, mean_update)
        steps, optimizer_state = server_optimizer.update(pseudo_gradient, state.optimizer_state, state.params)
        return ServerState(optax.apply_updates(state.params, steps), optimizer_state)

    if backend == "vmap":
        @jax.jit
        def round_function(state, client_data, client_keys, noise_multiplier=None):
            updates, aux = run_clients(state.params, client_data, client_keys, noise_multiplier)
            return server_step(state, updates, aux, client_data.client_mask), updates, aux
        round_function.compiled_functions = (round_function,)
        return round_function

    jitted_server_step = jax.jit(server_step)

    def round_function(state, client_data, client_keys, noise_multiplier=None):
        updates, aux = run_clients(state.params, client_data, client_keys, noise_multiplier)
        return jitted_server_step(state, updates, aux, client_data.client_mask), updates, aux

    round_function.compiled_functions = (run_clients.jitted_client_update, jitted_server_step)
    return round_function


def init_server_state(params: Params, server_optimizer: optax.GradientTransformation) -> ServerState:
    return ServerState(params, server_optimizer.init(params))
