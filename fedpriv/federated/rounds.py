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

from fedpriv.defenses.plans import RoundNoise
from fedpriv.defenses.server_stages import RoundAggregate, ServerPipeline, StageContext
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
               pipeline: ServerPipeline, weights: Callable, weighting: str = "uniform") -> RoundFunction:
    """Builds the round function (its signature is in ``RoundFunction``'s comment above).

    Args:
      client_update: the pure client function (client-side transforms included).
      server_optimizer: the optax optimizer on the pseudo-gradient.
      backend: a client backend, ``"vmap"`` or ``"loop"``.
      pipeline: the server stages.
      weights: ``weights(weighting, client_mask, realised_examples) -> [C]``, the privacy
        plan's :meth:`aggregation_weights` (public constants under DP).
      weighting: the weighting asked for (``"uniform"`` or ``"examples"``).

    With ``backend="vmap"`` and no host-side stage the whole round is one jitted call;
    otherwise clients, each stage and the server step are separate jitted calls (host
    stages run on NumPy in between). Nothing recompiles after the first round while shapes
    stay fixed; the round's noise multipliers are traced, so schedules never recompile.
    """
    if backend not in CLIENT_BACKENDS:
        raise ValueError(f"client backend must be one of {CLIENT_BACKENDS}, got {backend!r}")
    run_clients = for_each_client(client_update, backend)
    stages = pipeline.stages

    def start(params, client_data, client_keys, noise: RoundNoise, per_client):
        updates, reports = run_clients(params, client_data, client_keys, noise.local, per_client)
        aggregate = RoundAggregate(messages=updates,
                                   weights=weights(weighting, client_data.client_mask, reports.num_examples))
        return updates, reports, aggregate

    if backend == "vmap" and not pipeline.runs_on_host:
        @jax.jit
        def fused_round(state, client_data, client_keys, stage_states, noise, per_client):
            updates, reports, aggregate = start(state.params, client_data, client_keys, noise, per_client)
            context = StageContext(server_noise_multiplier=noise.server)
            new_states, stats = [], {}
            for stage, stage_state in zip(stages, stage_states):
                aggregate, stage_state, report = stage.update(aggregate, stage_state, context)
                new_states.append(stage_state)
                stats.update(report)
            return _apply(server_optimizer, state, aggregate.mean_update), updates, reports, tuple(new_states), stats

        def round_function(state, client_data, client_keys, stage_states, noise, per_client=None):
            new_state, updates, reports, new_states, stats = fused_round(state, client_data, client_keys,
                                                                         stage_states, noise, per_client)
            return RoundOutcome(new_state, updates, updates, reports, new_states, jax.device_get(stats), False)

        round_function.compiled_functions = (fused_round,)
        return round_function

    jitted_start = jax.jit(start) if backend == "vmap" else start
    stage_updates = [stage.update if stage.runs_on_host else jax.jit(stage.update) for stage in stages]
    jitted_apply = jax.jit(lambda state, mean_update: _apply(server_optimizer, state, mean_update))

    def round_function(state, client_data, client_keys, stage_states, noise, per_client=None):
        updates, reports, aggregate = jitted_start(state.params, client_data, client_keys, noise, per_client)
        context = StageContext(server_noise_multiplier=noise.server)
        new_states, stats = list(stage_states), {}
        observed = updates
        for index, (stage, update) in enumerate(zip(stages, stage_updates)):
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


def initial_stage_states(pipeline: ServerPipeline, key: jax.Array) -> tuple[Any, ...]:
    """Each stage's initial state, from its own key of the server's stream."""
    return tuple(stage.init(jax.random.fold_in(key, index)) for index, stage in enumerate(pipeline.stages))
