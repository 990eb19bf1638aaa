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
from fedpriv.federated.server import (SERVER_OPTIMIZERS, WEIGHTINGS, Aggregation, init_server_state,
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
      client_sampling_rate: ``None``, or Poisson client sampling: every client takes
        part independently with this probability (what DP-FedAvg's accounting assumes);
        exclusive with ``clients_per_round``.
      private_head: model partitioning (FedPer, Arivazhagan et al. 2019, arXiv
        1912.00818): only the feature extractor is federated; each hospital keeps and
        trains its own head (the model's ``head_names``), which the server never sees.
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
    client_sampling_rate: float | None = None
    private_head: bool = False

    def __post_init__(self):
        if self.client_sampling_rate is not None:
            if self.clients_per_round is not None:
                raise ValueError("set either clients_per_round (fixed-size cohorts) or client_sampling_rate "
                                 f"(Poisson sampling), not both; got {self.clients_per_round} and "
                                 f"{self.client_sampling_rate}")
            if not 0 < self.client_sampling_rate <= 1:
                raise ValueError(f"client_sampling_rate must be in (0, 1], got {self.client_sampling_rate!r}")
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
                                local_momentum=self.local.momentum,
                                private_layers=tuple(model.head_names) if self.private_head else ())


def sample_clients(key: jax.Array, num_clients: int, clients_per_round: int | None,
                   sampling_rate: float | None = None) -> np.ndarray:
    """A boolean participation mask: ``clients_per_round`` clients uniformly without
    replacement, or each client independently with ``sampling_rate`` (Poisson)."""
    if sampling_rate is not None:
        return numpy_generator(key).random(num_clients) < sampling_rate
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
    private_heads: Params | None = None
    round_reports: list[dict] = dataclasses.field(default_factory=list)

    def hospital_params(self, model: Model, client: int) -> Params:
        """The model hospital ``client`` uses: the global params, with its own head when
        the model is partitioned."""
        if self.private_heads is None:
            return self.params
        head = jax.tree_util.tree_map(lambda leaf: leaf[client], self.private_heads)
        return {**self.params, **head}


def train(*, model: Model, config: FederatedConfig, params: Params,
          round_data: Callable[[int, np.ndarray], ClientData], sampling_key: jax.Array,
          clients_key: jax.Array, num_clients: int, observe_rounds: Collection[int] = (),
          dp_plan=None, stop_before_round: Callable[[int], str] | None = None,
          aggregation: Aggregation | None = None, server_key: jax.Array | None = None,
          update_transform: Callable | None = None,
          on_round: Callable[[int, np.ndarray, Params], None] | None = None,
          accept_model: Callable[[int, np.ndarray, Params], np.ndarray] | None = None) -> TrainingResult:
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
      aggregation: the protocol and server-side defenses (``None``: plaintext weighted
        mean with ``config.weighting``).
      server_key: stream for server-side randomness (DP-FedAvg noise, screening).
      update_transform: optional ``make(key) -> optax transform`` each client applies to
        its update before sending it (local DP, compression), with its own key.
      on_round: optional ``on_round(round_index, participating [C] bool, sent [C, ...])``
        called after every round with what each hospital sent (e.g. for an audit ledger).
      accept_model: optional ``accept_model(round_index, participating, sent_params) ->
        [C] bool``: each sampled hospital screens the model it received and refuses to
        train on it (client-side screening); refusing hospitals sit the round out.

    Returns:
      A ``TrainingResult``.
    """
    bad = [r for r in observe_rounds if not 0 <= r < config.rounds]
    if bad:
        raise ValueError(f"observe_rounds must lie in [0, {config.rounds}), got {bad}")
    if aggregation is None:
        aggregation = Aggregation(weighting=config.weighting)
    fedavg_plan = aggregation.dp_fedavg
    if fedavg_plan is not None and fedavg_plan.client_sampling_rate != (config.client_sampling_rate or 1.0):
        raise ValueError(f"DP-FedAvg accounts for client_sampling_rate {fedavg_plan.client_sampling_rate}, but the "
                         f"federation samples clients with client_sampling_rate={config.client_sampling_rate} "
                         f"and clients_per_round={config.clients_per_round}")
    if server_key is None:
        server_key = jax.random.fold_in(clients_key, 2**31 - 1)
    client_update = make_client_update(model, config.local, dp_plan)
    if update_transform is not None:
        client_update = _with_update_transform(client_update, update_transform)
    heads = None
    if config.private_head:
        client_update = _with_private_head(client_update, model.head_names)
        _, head = model.split_params(params)
        heads = jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (num_clients, *leaf.shape)), head)
    server_optimizer = make_server_optimizer(config.server_optimizer, config.server_learning_rate)
    round_function = make_round(client_update, server_optimizer, backend=config.backend, aggregation=aggregation)
    state = init_server_state(params, server_optimizer)
    observations, observed_data, seconds, reports = {}, {}, [], []
    stop_reason = ""
    for round_index in range(config.rounds):
        if stop_before_round is not None:
            stop_reason = stop_before_round(round_index)
            if stop_reason:
                logger.info("training stopped before round %d: %s", round_index, stop_reason)
                break
        participating = sample_clients(jax.random.fold_in(sampling_key, round_index), num_clients,
                                       config.clients_per_round, config.client_sampling_rate)
        if accept_model is not None:
            participating = participating & np.asarray(accept_model(round_index, participating, state.params), bool)
        client_data = round_data(round_index, participating)
        client_keys = jax.random.split(jax.random.fold_in(clients_key, round_index), num_clients)
        start = time.perf_counter()
        sent_params = state.params
        # This round's values of the noise schedules, traced: no recompilation.
        noise_multiplier = None if dp_plan is None else jnp.float32(dp_plan.noise_multiplier_in_round(round_index))
        server_noise_multiplier = (None if fedavg_plan is None
                                   else jnp.float32(fedavg_plan.noise_multiplier_in_round(round_index)))
        state, observed, aux = round_function(state, client_data, client_keys, noise_multiplier,
                                              jax.random.fold_in(server_key, round_index), heads,
                                              server_noise_multiplier)
        if heads is not None:  # each participant keeps its own trained head
            heads = jax.tree_util.tree_map(lambda head, update: head + update, heads, aux.pop("head_update"))
        jax.block_until_ready(state.params)
        seconds.append(time.perf_counter() - start)
        sent = aux.pop("sent_messages", observed)
        if on_round is not None:
            on_round(round_index, participating, sent)
        reports.append(_round_report(aux))
        logger.info("round %d took %.2f s", round_index, seconds[-1])
        if round_index in observe_rounds:
            present = np.flatnonzero(participating)
            if aggregation.observes_aggregate:
                updates, client_ids = observed, ()
            else:
                updates = jax.tree_util.tree_map(lambda u: u[present], observed)
                client_ids = tuple(int(c) for c in present)
            observations[round_index] = Observation(
                params=sent_params, updates=updates, aggregated=aggregation.observes_aggregate,
                round_index=round_index, metadata=config.protocol(model, client_ids))
            observed_data[round_index] = client_data
    return TrainingResult(state.params, observations, observed_data, seconds, len(seconds), stop_reason,
                          private_heads=heads, round_reports=reports)


def _with_private_head(client_update, head_names: tuple[str, ...]):
    """The client function of a partitioned model: the client trains the global feature
    extractor together with its own head, sends only the extractor's update and keeps
    the head's (returned in ``aux["head_update"]``, never aggregated)."""
    def partitioned_update(params, examples, example_mask, key, noise_multiplier=None, head=None):
        update, aux = client_update({**params, **head}, examples, example_mask, key, noise_multiplier)
        shared = {name: (jax.tree_util.tree_map(jnp.zeros_like, leaf) if name in head_names else leaf)
                  for name, leaf in update.items()}
        return shared, {**aux, "head_update": {name: update[name] for name in head_names}}
    return partitioned_update


def _with_update_transform(client_update, make_transform):
    """The client function followed by a message transform keyed by the client's own key."""
    def transformed_update(params, examples, example_mask, key, noise_multiplier=None, *per_client):
        training_key, transform_key = jax.random.split(key)
        update, aux = client_update(params, examples, example_mask, training_key, noise_multiplier, *per_client)
        transform = make_transform(transform_key)
        update, _ = transform.update(update, transform.init(update))
        return update, aux
    return transformed_update


def _round_report(aux: dict) -> dict:
    """Host-side round-level counts and defense reports (per-client arrays left out)."""
    report = {}
    for name, value in aux.items():
        if name in ("num_examples", "fraction_clipped", "head_update"):
            continue
        report[name] = jax.device_get(value)
    return report
