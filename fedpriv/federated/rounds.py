"""FedSGD and FedAvg rounds: clients run, the server stages aggregate, the server steps (DESIGN §3.3).

Both algorithms are one round function: FedSGD is one local step with learning rate 1
(the update is minus the gradient), FedAvg is several local steps. The server treats
minus the round's mean update as a pseudo-gradient for an optax optimizer, so ``sgd(1.0)``
is plain FedAvg and ``adam`` is FedAdam (Reddi et al. 2021, arXiv 2003.00295).

The privacy plan decides what runs inside each client and which aggregation weights are
allowed; the server side is a :class:`fedpriv.defenses.server_stages.ServerPipeline` of
``init``/``update`` stages whose states the training loop carries from round to round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from fedpriv.defenses.plans import RoundNoise
from fedpriv.defenses.server_stages import RoundAggregate, ServerPipeline, StageContext
from fedpriv.federated.client_mesh import (CLIENT_AXIS, ClientPlacement, gather_clients, replicate, shard_clients,
                                           take_clients, to_local)
from fedpriv.federated.clients import CLIENT_BACKENDS, for_each_client
from fedpriv.federated.local_sgd import ClientReport, ClientUpdate
from fedpriv.typing import ClientData, Params

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam")


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


def init_server_state(params: Params, server_optimizer: optax.GradientTransformation) -> ServerState:
    return ServerState(params, server_optimizer.init(params))


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    """One round's result.

    Attributes:
      state: the server state after the round (unchanged when the round aborted).
      sent: what each hospital sent, leaves ``[C, ...]`` (absent hospitals all zero).
      observed: what the server reads: ``sent`` under the plaintext protocol, the mean of
        the securely summed messages (leaves ``[1, ...]``) otherwise.
      reports: each hospital's :class:`ClientReport` (leaves ``[C]``), kept by the hospitals.
      stage_states: the server stages' states for the next round.
      stats: round-level counts and stage reports (host values).
      aborted: the protocol could not finish; nothing was applied.
    """

    state: ServerState
    sent: Params
    observed: Params
    reports: ClientReport
    stage_states: tuple
    stats: dict
    aborted: bool


# round(state, client_data, client_keys, stage_states, noise: RoundNoise, per_client=None) -> RoundOutcome
RoundFunction = Callable[..., RoundOutcome]


def _apply(server_optimizer, state: ServerState, mean_update: Params) -> ServerState:
    pseudo_gradient = jax.tree_util.tree_map(jnp.negative, mean_update)
    steps, optimizer_state = server_optimizer.update(pseudo_gradient, state.optimizer_state, state.params)
    return ServerState(optax.apply_updates(state.params, steps), optimizer_state)


def _observed_sum(aggregate: RoundAggregate) -> Params:
    total = aggregate.total_weight
    return jax.tree_util.tree_map(lambda leaf: (leaf / jnp.where(total > 0, total, 1.0))[None],
                                  aggregate.weighted_sum)


def make_round(client_update: ClientUpdate, server_optimizer: optax.GradientTransformation, *, backend: str,
               pipeline: ServerPipeline, weights: Callable, weighting: str = "uniform",
               placement: ClientPlacement = ClientPlacement()) -> RoundFunction:
    """Builds the round function (its signature is in ``RoundFunction``'s comment above).

    Args:
      client_update: the pure client function (client-side transforms included).
      server_optimizer: the optax optimizer on the pseudo-gradient.
      backend: a client backend, ``"vmap"``, ``"loop"`` or ``"sharded"``.
      pipeline: the server stages.
      weights: ``weights(weighting, client_mask, realised_examples) -> [C]``, the privacy
        plan's :meth:`aggregation_weights` (public constants under DP).
      weighting: the weighting asked for (``"uniform"`` or ``"examples"``).
      placement: the client backend's device count and client chunk.

    With ``backend="vmap"`` or ``"sharded"`` and no host-side stage the whole round is one
    jitted call; otherwise clients, each stage and the server step are separate jitted calls
    (host stages run on NumPy in between). ``"sharded"`` places each round's clients on the
    mesh (padded with absent clients, each device holding its own) and the server state on
    every device, so the stages' sums over clients are cross-device reductions; the round
    hands back local arrays (server state: this process's replica; per-client results:
    gathered, padding dropped), as ``vmap`` does. Nothing recompiles after the first round
    while shapes stay fixed; the round's noise multipliers are traced, so schedules never
    recompile.
    """
    if backend not in CLIENT_BACKENDS:
        raise ValueError(f"client backend must be one of {CLIENT_BACKENDS}, got {backend!r}")
    run_clients = for_each_client(client_update, backend, placement)
    mesh = getattr(run_clients, "mesh", None)

    def start(params, client_data, client_keys, noise: RoundNoise, per_client, num_clients=None):
        sent, reports = run_clients(params, client_data, client_keys, noise.local, per_client)
        kept, client_mask = (sent, reports), client_data.client_mask
        if num_clients is not None:  # the placement padded the round with absent clients: aggregate without them
            kept, client_mask = take_clients((kept, client_mask), num_clients)
        aggregate = RoundAggregate(messages=kept[0], weights=weights(weighting, client_mask, kept[1].num_examples))
        return sent, reports, aggregate

    if backend != "loop" and not pipeline.runs_on_host:
        return _fused_round(start, mesh, pipeline, server_optimizer)
    return _staged_round(start, run_clients, mesh, pipeline, server_optimizer, compile_start=backend != "loop")


def _fused_round(start, mesh, pipeline: ServerPipeline, server_optimizer) -> RoundFunction:
    """The whole round as one jitted call: clients, every (traceable) stage, the server step."""
    def fused_round(state, client_data, client_keys, stage_states, noise, per_client, num_clients=None):
        updates, reports, aggregate = start(state.params, client_data, client_keys, noise, per_client, num_clients)
        context = StageContext(server_noise_multiplier=noise.server)
        new_states, stats = [], {}
        for stage, stage_state in zip(pipeline.stages, stage_states):
            aggregate, stage_state, report = stage.update(aggregate, stage_state, context)
            new_states.append(stage_state)
            stats.update(report)
        return _apply(server_optimizer, state, aggregate.mean_update), updates, reports, tuple(new_states), stats

    fused_round = _compile_on(mesh, fused_round, outputs=("server", "clients", "clients", "server", "server"))

    def round_function(state, client_data, client_keys, stage_states, noise, per_client=None):
        (state, stage_states, noise), clients, num_clients = _place(mesh, (state, stage_states, noise),
                                                                    (client_data, client_keys, per_client))
        client_data, client_keys, per_client = clients
        new_state, updates, reports, new_states, stats = fused_round(
            state, client_data, client_keys, stage_states, noise, per_client, num_clients=num_clients)
        new_state, new_states = to_local((new_state, new_states))
        updates, reports = _gathered((updates, reports), num_clients)
        return RoundOutcome(new_state, updates, updates, reports, new_states, jax.device_get(stats), False)

    round_function.compiled_functions = (fused_round,)
    return round_function


def _staged_round(start, run_clients, mesh, pipeline: ServerPipeline, server_optimizer, *,
                  compile_start: bool) -> RoundFunction:
    """Clients, each stage and the server step as separate calls (host stages run on NumPy
    in between); a protocol that aborts ends the round with nothing changed."""
    jitted_start = _compile_on(mesh, start, outputs=("clients", "clients", "server")) if compile_start else start
    stage_updates = [stage.update if stage.runs_on_host else jax.jit(stage.update) for stage in pipeline.stages]
    jitted_apply = jax.jit(lambda state, mean_update: _apply(server_optimizer, state, mean_update))

    def round_function(state, client_data, client_keys, stage_states, noise, per_client=None):
        (params, round_noise), clients, num_clients = _place(mesh, (state.params, noise),
                                                             (client_data, client_keys, per_client))
        client_data, client_keys, per_client = clients
        updates, reports, aggregate = jitted_start(params, client_data, client_keys, round_noise, per_client,
                                                   num_clients=num_clients)
        updates, reports = _gathered((updates, reports), num_clients)
        aggregate = to_local(aggregate)
        context = StageContext(server_noise_multiplier=noise.server)
        new_states, stats = list(stage_states), {}
        observed = updates
        for index, (stage, update) in enumerate(zip(pipeline.stages, stage_updates)):
            aggregate, new_states[index], report = update(aggregate, stage_states[index], context)
            stats.update(jax.device_get(report))
            if stage is pipeline.protocol and pipeline.observes_aggregate:
                observed = _observed_sum(aggregate)
            if bool(aggregate.aborted):  # nothing was revealed: the round changes nothing
                return RoundOutcome(state, updates, observed, reports, tuple(new_states), stats, True)
        new_state = jitted_apply(state, aggregate.mean_update)
        return RoundOutcome(new_state, updates, observed, reports, tuple(new_states), stats, False)

    round_function.compiled_functions = tuple(
        f for f in (getattr(run_clients, "jitted_client_update", None), jitted_apply) if f is not None)
    return round_function


def _compile_on(mesh, function, *, outputs: tuple[str, ...]):
    """``jax.jit`` of a round part; on a mesh its outputs stay where they belong: per-client
    results spread over the devices by client, server-side results on every device."""
    if mesh is None:
        return jax.jit(function, static_argnames="num_clients")
    placed = {"clients": NamedSharding(mesh, PartitionSpec(CLIENT_AXIS)),
              "server": NamedSharding(mesh, PartitionSpec())}
    return jax.jit(function, static_argnames="num_clients", out_shardings=tuple(placed[kind] for kind in outputs))


def _place(mesh, replicated, clients):
    """The round's inputs on ``mesh``: server-side values on every device, the clients padded
    and spread over it, with the true client count; unchanged (count ``None``) without a mesh."""
    if mesh is None:
        return replicated, clients, None
    client_data = clients[0]
    return replicate(replicated, mesh), shard_clients(clients, client_data.num_clients, mesh), client_data.num_clients


def _gathered(per_client, num_clients):
    """Per-client results as local arrays of the round's clients (unchanged without a mesh)."""
    return per_client if num_clients is None else gather_clients(per_client, num_clients)


def initial_stage_states(pipeline: ServerPipeline, key: jax.Array) -> tuple[Any, ...]:
    """Each stage's initial state, from its own key of the server's stream."""
    return tuple(stage.init(jax.random.fold_in(key, index)) for index, stage in enumerate(pipeline.stages))
