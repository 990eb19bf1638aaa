"""FedSGD and FedAvg rounds: clients run, the server aggregates and steps (DESIGN §3.3).

Both algorithms are one round function: FedSGD is one local step with learning rate 1
(the update is minus the gradient), FedAvg is several local steps. The server treats
minus the weighted mean update as a pseudo-gradient for an optax optimizer, so
``sgd(1.0)`` is plain FedAvg and ``adam`` is FedAdam (Reddi et al. 2021, arXiv 2003.00295).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.defenses.clipping import per_example_global_norms
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


# round(state, client_data, client_keys, noise_multiplier=None, server_key=None, per_client=None,
#       server_noise_multiplier=None) -> (new_state, observed_updates, aux)
RoundFunction = Callable[..., tuple[ServerState, Params, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Aggregation:
    """What happens between the clients' messages and the server's optimizer step.

    The stages run in a fixed order: client side (the DP-FedAvg clip, inside the
    hospital) -> protocol (what the server can read) -> server side (screening, robust
    rule, DP-FedAvg noise). Updates with a non-finite coordinate are always dropped and
    counted.

    Attributes:
      weighting: ``"examples"`` (FedAvg's n_k) or ``"uniform"``; DP-FedAvg always sums
        uniformly and divides by its public expected cohort size.
      dp_fedavg: ``None`` or a ``fedpriv.defenses.DPFedAvgPlan`` (client-level DP).
      protocol: ``None`` (plaintext: the server reads every client's message) or a
        host-side secure protocol with ``name`` and ``aggregate(messages [K, D] float32,
        key) -> (sum [D], report dict)``; the server then reads only the sum.
      screen: ``None`` or ``screen(messages, present [C] bool, key) -> (keep [C], report)``,
        a host-side anomaly filter over per-client messages (plaintext only).
      robust_rule: ``None`` or ``rule(messages, weights [C]) -> aggregate`` replacing the
        weighted mean (plaintext only, not with DP-FedAvg).
      max_update_norm: an update whose global L2 norm exceeds this is absurd for any model
        (a bug or an attack), is dropped like a non-finite one and counted
        (``num_dropped_oversized``); DP-FedAvg clips instead.
    """

    weighting: str = "examples"
    dp_fedavg: Any = None
    protocol: Any = None
    screen: Any = None
    robust_rule: Any = None
    max_update_norm: float = 1e6

    def __post_init__(self):
        if not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0, got {self.max_update_norm!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.protocol is not None and (self.screen is not None or self.robust_rule is not None):
            raise ValueError(f"protocol {getattr(self.protocol, 'name', self.protocol)!r} shows the server only the "
                             "sum of the updates, so per-client screening and robust rules cannot run: set "
                             "screen and robust_rule to None or use the plaintext protocol")
        if self.robust_rule is not None and self.dp_fedavg is not None:
            raise ValueError("robust_rule cannot replace DP-FedAvg's noised sum; use one or the other")

    @property
    def observes_aggregate(self) -> bool:
        """True when the server reads only the aggregate (secure aggregation, HE)."""
        return self.protocol is not None


def _finite_clients(updates: Params) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(updates)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
                              for leaf in leaves]), axis=0)


def _mask_clients(updates: Params, keep: jax.Array) -> Params:
    return jax.tree_util.tree_map(
        lambda leaf: jnp.where(keep.reshape((-1,) + (1,) * (leaf.ndim - 1)) > 0, leaf, jnp.zeros_like(leaf)),
        updates)


def make_round(client_update: ClientUpdate, server_optimizer: optax.GradientTransformation, *,
               backend: str, weighting: str = "examples", aggregation: Aggregation | None = None) -> RoundFunction:
    """Builds the round function (its signature is in ``RoundFunction``'s comment above).

    The round returns ``(new_state, observed, aux)``. ``observed`` is what the server
    reads: every client's message (leaves ``[C, ...]``; absent clients all zero) under
    the plaintext protocol, or the aggregate mean message (leaves ``[1, ...]``) under a
    secure protocol. ``aux`` holds per-client ``num_examples``/``fraction_clipped`` and
    round-level counts (``num_dropped_nonfinite``, ``num_screened_out``) plus the
    protocol's and screen's reports.

    With ``backend="vmap"`` and the plaintext protocol the whole round is one jitted
    call; otherwise clients, the host protocol and the server step are separate jitted
    calls. Nothing recompiles after the first round while shapes stay fixed.
    ``noise_multiplier`` is the clients' DP-SGD multiplier of the round and
    ``server_noise_multiplier`` DP-FedAvg's (both traced: schedules never recompile).
    ``server_key`` (fresh every round) is required by DP-FedAvg noise and screening;
    ``per_client`` (leaves ``[C, ...]``) goes to each client function as its last argument.
    """
    if backend not in CLIENT_BACKENDS:
        raise ValueError(f"client backend must be one of {CLIENT_BACKENDS}, got {backend!r}")
    if aggregation is None:
        aggregation = Aggregation(weighting=weighting)
    elif weighting != aggregation.weighting and weighting != "examples":
        raise ValueError("give weighting either directly or inside aggregation, not both")
    run_clients = for_each_client(client_update, backend)
    plan = aggregation.dp_fedavg

    def prepare(updates, aux, client_mask, server_key):
        """Client-side clip, then the messages the server receives and their weights."""
        finite = _finite_clients(updates)
        present = client_mask > 0
        info = {"num_dropped_nonfinite": jnp.sum(jnp.logical_and(present, jnp.logical_not(finite)))}
        if plan is not None:
            messages, weights, clip_aux = plan.clip_updates(updates, client_mask)
            info["fraction_clients_clipped"] = clip_aux["fraction_clipped"]
        else:
            norms = per_example_global_norms(_mask_clients(updates, finite))
            sane = jnp.logical_and(finite, norms <= aggregation.max_update_norm)
            info["num_dropped_oversized"] = jnp.sum(jnp.logical_and(present, jnp.logical_and(finite,
                                                                                              jnp.logical_not(sane))))
            weights = client_weights(aux, client_mask, aggregation.weighting) * sane
            messages = _mask_clients(updates, sane * present)
        return messages, weights, info

    def plaintext_sum(messages, weights):
        return jax.tree_util.tree_map(lambda m: jnp.tensordot(weights, m, axes=1), messages), jnp.sum(weights)

    def finish(state, messages, weights, weighted_sum, total_weight, server_key, server_noise_multiplier):
        if aggregation.robust_rule is not None:
            mean_update = aggregation.robust_rule(messages, weights)
        elif plan is not None:
            mean_update = plan.noised_mean(weighted_sum, jax.random.fold_in(server_key, 0), server_noise_multiplier)
        else:
            mean_update = jax.tree_util.tree_map(
                lambda leaf: leaf / jnp.where(total_weight > 0, total_weight, 1.0), weighted_sum)
        pseudo_gradient = jax.tree_util.tree_map(jnp.negative, mean_update)
        steps, optimizer_state = server_optimizer.update(pseudo_gradient, state.optimizer_state, state.params)
        return ServerState(optax.apply_updates(state.params, steps), optimizer_state)

    def check_key(server_key):
        if server_key is None and (plan is not None or aggregation.screen is not None):
            raise ValueError("this round adds DP-FedAvg noise or screens updates: pass a fresh server_key")
        return jax.random.key(0) if server_key is None else server_key

    if backend == "vmap" and aggregation.protocol is None and aggregation.screen is None:
        @jax.jit
        def fused_round(state, client_data, client_keys, noise_multiplier, server_key, per_client,
                        server_noise_multiplier):
            updates, aux = run_clients(state.params, client_data, client_keys, noise_multiplier, per_client)
            messages, weights, info = prepare(updates, aux, client_data.client_mask, server_key)
            weighted_sum, total = plaintext_sum(messages, weights)
            new_state = finish(state, messages, weights, weighted_sum, total, server_key, server_noise_multiplier)
            return new_state, messages, {**aux, **info}

        def round_function(state, client_data, client_keys, noise_multiplier=None, server_key=None,
                           per_client=None, server_noise_multiplier=None):
            return fused_round(state, client_data, client_keys, noise_multiplier, check_key(server_key), per_client,
                               server_noise_multiplier)
        round_function.compiled_functions = (fused_round,)
        return round_function

    jitted_prepare = jax.jit(prepare)
    jitted_sum = jax.jit(plaintext_sum)
    jitted_finish = jax.jit(finish)

    def round_function(state, client_data, client_keys, noise_multiplier=None, server_key=None, per_client=None,
                       server_noise_multiplier=None):
        server_key = check_key(server_key)
        updates, aux = run_clients(state.params, client_data, client_keys, noise_multiplier, per_client)
        messages, weights, info = jitted_prepare(updates, aux, client_data.client_mask, server_key)
        if aggregation.screen is not None:  # host-side: the screen reports which clients and why
            keep, info["screen"] = aggregation.screen(messages, weights > 0, jax.random.fold_in(server_key, 1))
            keep = jnp.asarray(keep, jnp.float32)
            info["num_screened_out"] = jnp.sum(jnp.logical_and(weights > 0, keep == 0))
            weights = weights * keep
        if aggregation.protocol is None:
            weighted_sum, total = jitted_sum(messages, weights)
            observed = messages
        else:
            weighted_sum, total, protocol_report = _host_protocol_sum(aggregation.protocol, messages, weights,
                                                                         jax.random.fold_in(server_key, 2))
            info["protocol"] = protocol_report
            observed = jax.tree_util.tree_map(
                lambda leaf: (leaf / jnp.where(total > 0, total, 1.0))[None], weighted_sum)
        new_state = jitted_finish(state, messages, weights, weighted_sum, total, server_key, server_noise_multiplier)
        if aggregation.protocol is not None:  # each hospital's own record of what it sent (audit ledger)
            info["sent_messages"] = messages
        return new_state, observed, {**aux, **info}

    round_function.compiled_functions = tuple(
        f for f in (getattr(run_clients, "jitted_client_update", None), jitted_prepare, jitted_finish) if f is not None)
    return round_function


def _host_protocol_sum(protocol, messages: Params, weights: jax.Array, key: jax.Array):
    """Runs a secure protocol on the host over the participating clients' weighted messages.

    Each client multiplies its message by its weight and appends the weight, so the
    protocol sums both and the server learns only the totals.
    """
    weights_host = np.asarray(jax.device_get(weights), np.float32)
    senders = np.flatnonzero(weights_host > 0)
    flat = jax.vmap(lambda m: jax.flatten_util.ravel_pytree(m)[0])(messages)
    _, unflatten = jax.flatten_util.ravel_pytree(jax.tree_util.tree_map(lambda leaf: leaf[0], messages))
    vectors = np.asarray(jax.device_get(flat), np.float32)[senders] * weights_host[senders, None]
    vectors = np.concatenate([vectors, weights_host[senders, None]], axis=1)
    if senders.size == 0:
        summed, report = np.zeros(vectors.shape[1], np.float32), {}
    else:
        summed, report = protocol.aggregate(vectors, key)
    summed = np.asarray(summed, np.float32)
    return unflatten(jnp.asarray(summed[:-1])), jnp.float32(summed[-1]), report


def init_server_state(params: Params, server_optimizer: optax.GradientTransformation) -> ServerState:
    return ServerState(params, server_optimizer.init(params))
