"""The federated training loop: sample clients, build the round's data, run the round,
record what the attacker sees in the chosen rounds."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.federated.server import (SERVER_OPTIMIZERS, WEIGHTINGS, init_server_state,
                                      make_round, make_server_optimizer)
from fedpriv.federated.clients import CLIENT_BACKENDS
from fedpriv.keys import numpy_generator
from fedpriv.typing import ClientData, Model, Observation, Params, ProtocolMetadata

logger = logging.getLogger(__name__)

ALGORITHMS = ("fedsgd", "fedavg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FederatedConfig:
    """The federation's protocol and the simulation's performance knobs.

    Attributes:
      algorithm: ``"fedsgd"`` (one step of learning rate 1: the update is minus the
        gradient) or ``"fedavg"`` (``local_steps`` steps of local SGD).
      rounds: number of training rounds.
      clients_per_round: clients sampled uniformly without replacement each round;
        ``None`` means every client takes part (the usual cross-silo setting).
      local_steps: local steps per round (1 for FedSGD).
      batch_size: examples per local step.
      local: the local optimizer.
      server_optimizer: one of ``SERVER_OPTIMIZERS``.
      server_learning_rate: server step size on the pseudo-gradient.
      weighting: ``"examples"`` (FedAvg's n_k weighting) or ``"uniform"``.
      backend: ``"vmap"`` or ``"loop"`` (an ``impl`` choice, same numbers).
    """

    algorithm: str
    rounds: int
    clients_per_round: int | None
    local_steps: int
    batch_size: int
    local: LocalTrainingConfig
    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0
    weighting: str = "examples"
    backend: str = "vmap"

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if self.clients_per_round is not None and not self.clients_per_round >= 1:
            raise ValueError(f"clients_per_round must be >= 1 or None (all), got {self.clients_per_round!r}")
        if not (isinstance(self.local_steps, int) and self.local_steps >= 1):
            raise ValueError(f"local_steps must be an integer >= 1, got {self.local_steps!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.algorithm == "fedsgd" and (self.local_steps != 1 or self.local.learning_rate != 1.0
                                           or self.local.optimizer != "sgd" or self.local.momentum):
            raise ValueError("algorithm 'fedsgd' sends one gradient: local_steps must be 1 and local SGD "
                             f"with learning_rate 1.0 and no momentum, got local_steps={self.local_steps}, "
                             f"local={self.local}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ValueError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}")
        if not self.server_learning_rate > 0:
            raise ValueError(f"server_learning_rate must be > 0, got {self.server_learning_rate!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.backend not in CLIENT_BACKENDS:
            raise ValueError(f"backend must be one of {CLIENT_BACKENDS}, got {self.backend!r}")

    def protocol(self, model: Model, client_ids: tuple[int, ...]) -> ProtocolMetadata:
        """The public protocol facts an attacker of this federation knows."""
        return ProtocolMetadata(algorithm=self.algorithm, local_steps=self.local_steps,
                                batch_size=self.batch_size, learning_rate=self.local.learning_rate,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=client_ids, local_optimizer=self.local.optimizer,
                                local_momentum=self.local.momentum)


def sample_clients(key: jax.Array, num_clients: int, clients_per_round: int | None) -> np.ndarray:
    """A boolean participation mask: ``clients_per_round`` clients uniformly without replacement."""
    if clients_per_round is None or clients_per_round >= num_clients:
        return np.ones(num_clients, dtype=bool)
    chosen = numpy_generator(key).choice(num_clients, size=clients_per_round, replace=False)
    mask = np.zeros(num_clients, dtype=bool)
    mask[chosen] = True
    return mask


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """Final params, the attacker's observations and the ground-truth data of those rounds.

    ``rounds_run`` is below the configured rounds when ``stop_before_round`` ended the
    run; ``stop_reason`` then says why (empty otherwise).
    """

    params: Params
    observations: dict[int, Observation]
    observed_data: dict[int, ClientData]
    seconds_per_round: list[float]
    rounds_run: int
    stop_reason: str = ""


def train(*, model: Model, config: FederatedConfig, params: Params,
          round_data: Callable[[int, np.ndarray], ClientData], sampling_key: jax.Array,
          clients_key: jax.Array, num_clients: int, observe_rounds: Collection[int] = (),
          dp_plan=None, stop_before_round: Callable[[int], str] | None = None) -> TrainingResult:
    """Runs ``config.rounds`` rounds of federated training.

    Args:
      model: the model.
      config: the federation.
      params: initial global params.
      round_data: ``round_data(round_index, participating_mask) -> ClientData`` built on
        the host (fixed shapes every round, so nothing recompiles).
      sampling_key: stream for client sampling.
      clients_key: stream for per-client randomness (DP noise).
      num_clients: number of hospitals.
      observe_rounds: rounds (0-based) whose per-client updates the server records.
      dp_plan: optional DP-SGD plan run inside every client.
      stop_before_round: optional ``stop_before_round(round_index) -> reason``; a
        non-empty reason ends training before that round is run (e.g. a privacy ledger
        whose budget the round would exceed).

    Returns:
      A ``TrainingResult``.
    """
    bad = [r for r in observe_rounds if not 0 <= r < config.rounds]
    if bad:
        raise ValueError(f"observe_rounds must lie in [0, {config.rounds}), got {bad}")
    client_update = make_client_update(model, config.local, dp_plan)
    server_optimizer = make_server_optimizer(config.server_optimizer, config.server_learning_rate)
    round_function = make_round(client_update, server_optimizer, backend=config.backend,
                                weighting=config.weighting)
    state = init_server_state(params, server_optimizer)
    observations, observed_data, seconds = {}, {}, []
    stop_reason = ""
    for round_index in range(config.rounds):
        if stop_before_round is not None:
            stop_reason = stop_before_round(round_index)
            if stop_reason:
                logger.info("training stopped before round %d: %s", round_index, stop_reason)
                break
        participating = sample_clients(jax.random.fold_in(sampling_key, round_index), num_clients,
                                       config.clients_per_round)
        client_data = round_data(round_index, participating)
        client_keys = jax.random.split(jax.random.fold_in(clients_key, round_index), num_clients)
        start = time.perf_counter()
        sent_params = state.params
        if dp_plan is None:
            state, updates, _ = round_function(state, client_data, client_keys)
        else:  # this round's value of the plan's noise schedule, traced: no recompilation
            noise_multiplier = jnp.float32(dp_plan.noise_multiplier_in_round(round_index))
            state, updates, _ = round_function(state, client_data, client_keys, noise_multiplier)
        jax.block_until_ready(state.params)
        seconds.append(time.perf_counter() - start)
        logger.info("round %d took %.2f s", round_index, seconds[-1])
        if round_index in observe_rounds:
            present = np.flatnonzero(participating)
            observations[round_index] = Observation(
                params=sent_params,
                updates=jax.tree_util.tree_map(lambda u: u[present], updates),
                aggregated=False, round_index=round_index,
                metadata=config.protocol(model, tuple(int(c) for c in present)))
            observed_data[round_index] = client_data
    return TrainingResult(state.params, observations, observed_data, seconds, len(seconds), stop_reason)
