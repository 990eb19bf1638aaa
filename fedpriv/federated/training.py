"""The federated training loop: sample clients, build the round's data, run the round,
record what the attacker sees in the chosen rounds."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.defenses.plans import WEIGHTINGS, PrivacyPlan, UpdateStage
from fedpriv.defenses.server_stages import ServerPipeline
from fedpriv.federated.checkpoints import (CheckpointMismatchError, HostParty, RoundCheckpoints, check_same,
                                           params_sha256)
from fedpriv.federated.client_mesh import ClientPlacement
from fedpriv.federated.clients import CLIENT_BACKENDS
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.federated.rounds import (SERVER_OPTIMIZERS, RoundOutcome, init_server_state, initial_stage_states,
                                      make_round, make_server_optimizer)
from fedpriv.keys import numpy_generator
from fedpriv.progress import progress_bar
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
      weighting: ``"uniform"`` over the round's participants, or ``"examples"`` (the
        examples each client processed; refused by every DP plan: a realised sample count
        is private).
      backend: ``"vmap"``, ``"loop"`` or ``"sharded"`` (an ``impl`` choice, same numbers).
      placement: the backend's device count and client chunk (``impl`` choices, same numbers).
    """

    algorithm: str
    rounds: int
    clients_per_round: int | None
    local_steps: int
    batch_size: int
    local: LocalTrainingConfig
    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0
    weighting: str = "uniform"
    backend: str = "vmap"
    client_sampling_rate: float | None = None
    private_head: bool = False
    placement: ClientPlacement = ClientPlacement()

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
        if not isinstance(self.placement, ClientPlacement):
            raise ValueError(f"placement must be a ClientPlacement, got {self.placement!r}")
        self.placement.check_backend(self.backend)

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Federation:
    """What every round runs: the model and protocol, the privacy plan, and the stages around it.

    Attributes:
      model: the model.
      config: the federated protocol.
      plan: the privacy plan (``fedpriv.defenses.plans``; ``NoPrivacy`` included): what runs
        in each local step, the aggregation weights, the round's noise multipliers.
      client_stages: transforms each hospital applies to its update before sending it, in
        order (the plan's ``client_update_stages``, compression placed by the plan).
      pipeline: the server stages (screening, protocol, aggregator).
      num_clients: the hospitals.
    """

    model: Model
    config: FederatedConfig
    plan: PrivacyPlan
    num_clients: int
    client_stages: tuple[UpdateStage, ...] = ()
    pipeline: ServerPipeline = dataclasses.field(default_factory=ServerPipeline)

    def client_update(self):
        """The client function every hospital runs (and attacks differentiate through)."""
        client_update = make_client_update(self.model, self.config.local, self.plan.local_mechanism)
        if self.config.private_head:
            client_update = _with_private_head(client_update, self.model.head_names)
        if self.client_stages:  # on what leaves the hospital (the kept head never does)
            client_update = _with_update_stages(client_update, self.client_stages)
        return client_update


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingKeys:
    """The run's key streams training draws from: client sampling, per-client randomness
    (DP-SGD and local DP noise), the server stages (DP-FedAvg noise, screening, protocol)."""

    sampling: jax.Array
    clients: jax.Array
    server: jax.Array


class RoundData(Protocol):
    """Builds a round's padded ``ClientData`` on the host (fixed shapes: nothing recompiles)."""

    def __call__(self, round_index: int, participating: np.ndarray) -> ClientData: ...


class RoundBudget(Protocol):
    """Asked before each round; a non-empty reason stops training (e.g. a privacy ledger)."""

    def stop_reason(self, round_index: int) -> str: ...


class ModelScreen(Protocol):
    """Each sampled hospital screens the model it receives and may refuse to train on it."""

    def accepts(self, round_index: int, participating: np.ndarray, params: Params) -> np.ndarray: ...


class RoundObserver(Protocol):
    """Sees each round's participants and its outcome: what each hospital sent, the new global
    model, whether it aborted (e.g. the signed audit log, an end-to-end audit)."""

    def after_round(self, round_index: int, participating: np.ndarray, outcome: RoundOutcome) -> None: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingHooks:
    """Host-side parties of the loop: a budget, the hospitals' model screen, round observers.

    A party that carries state from round to round (a ledger's rounds, a screen's history,
    an observer's file) implements :class:`fedpriv.federated.checkpoints.HostParty`, so a
    checkpointed run resumes it; the others need nothing.
    """

    budget: RoundBudget | None = None
    model_screen: ModelScreen | None = None
    observers: tuple[RoundObserver, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """Final params, the attacker's observations and the ground-truth data of those rounds.

    ``rounds_run`` is below the configured rounds when the budget ended the run;
    ``stop_reason`` then says why (empty otherwise). ``rounds_aborted`` counts rounds whose
    secure protocol could not finish (they changed nothing). ``resumed_from_round`` is the
    round a checkpointed run resumed at (``None``: it started at round 0), and
    ``checkpoint_seconds`` how long the loop waited for each checkpoint this process wrote.
    """

    params: Params
    observations: dict[int, Observation]
    observed_data: dict[int, ClientData]
    seconds_per_round: list[float]
    rounds_run: int
    stop_reason: str = ""
    private_heads: Params | None = None
    round_stats: list[dict] = dataclasses.field(default_factory=list)
    rounds_aborted: int = 0
    resumed_from_round: int | None = None
    checkpoint_seconds: list[float] = dataclasses.field(default_factory=list)

    def hospital_params(self, model: Model, client: int) -> Params:
        """The model hospital ``client`` uses: the global params, with its own head when
        the model is partitioned."""
        if self.private_heads is None:
            return self.params
        head = jax.tree_util.tree_map(lambda leaf: leaf[client], self.private_heads)
        return {**self.params, **head}


def train(federation: Federation, *, params: Params, data: RoundData, keys: TrainingKeys,
          hooks: TrainingHooks = TrainingHooks(), observe_rounds: Collection[int] = (),
          checkpoints: RoundCheckpoints | None = None) -> TrainingResult:
    """Runs ``federation.config.rounds`` rounds of federated training.

    With ``checkpoints`` the loop first resumes from the newest intact checkpoint (if any),
    then checkpoints its state before round 0, on the interval and after its last round; a
    run killed anywhere and started again with the same arguments ends bit-identical to an
    uninterrupted one (wall-clock seconds aside).

    Args:
      federation: what every round runs.
      params: initial global params.
      data: the rounds' data, built on the host.
      keys: the key streams.
      hooks: budget, model screen and observers.
      observe_rounds: rounds (0-based) whose updates the server records for the attacker.
      checkpoints: the run's checkpoint folder, or ``None`` (no checkpoints).

    Returns:
      A ``TrainingResult``.

    Raises:
      CheckpointMismatchError: if the checkpoint to resume from was written by another run.
    """
    config = federation.config
    bad = [r for r in observe_rounds if not 0 <= r < config.rounds]
    if bad:
        raise ValueError(f"observe_rounds must lie in [0, {config.rounds}), got {bad}")
    server_optimizer = make_server_optimizer(config.server_optimizer, config.server_learning_rate)
    round_function = make_round(federation.client_update(), server_optimizer, backend=config.backend,
                                pipeline=federation.pipeline, weights=federation.plan.aggregation_weights,
                                weighting=config.weighting, placement=config.placement)
    state = init_server_state(params, server_optimizer)
    stage_states = initial_stage_states(federation.pipeline, keys.server)
    loop = _Loop(federation=federation, data=data, keys=keys, hooks=hooks, observe_rounds=set(observe_rounds),
                 checkpoints=checkpoints)
    carried = loop.resume_or_start(params, (state, stage_states, loop.initial_heads(params)))
    try:
        state, stage_states, heads = loop.run_rounds(round_function, carried)
    finally:
        if checkpoints is not None:  # a run ended by an exception still commits the checkpoint it began
            checkpoints.wait()
    return TrainingResult(state.params, loop.observations, loop.observed_data, loop.seconds, len(loop.seconds),
                          loop.stop_reason, private_heads=heads, round_stats=loop.stats,
                          rounds_aborted=loop.rounds_aborted, resumed_from_round=loop.resumed_from_round,
                          checkpoint_seconds=list(checkpoints.write_seconds) if checkpoints is not None else [])


@dataclasses.dataclass
class _Loop:
    """The per-round bookkeeping of :func:`train` (host side)."""

    federation: Federation
    data: RoundData
    keys: TrainingKeys
    hooks: TrainingHooks
    observe_rounds: set
    observations: dict = dataclasses.field(default_factory=dict)
    observed_data: dict = dataclasses.field(default_factory=dict)
    seconds: list = dataclasses.field(default_factory=list)
    stats: list = dataclasses.field(default_factory=list)
    stop_reason: str = ""
    rounds_aborted: int = 0
    checkpoints: RoundCheckpoints | None = None
    rounds_completed: int = 0
    resumed_from_round: int | None = None
    training_facts: dict = dataclasses.field(default_factory=dict)

    @property
    def next_round(self) -> int:
        """The first round to run: none when a resumed run had already stopped."""
        return self.federation.config.rounds if self.stop_reason else self.rounds_completed

    def parties(self) -> dict[str, HostParty]:
        """The host parties whose state a checkpoint holds, by their place in the loop."""
        named = {"data": self.data, "budget": self.hooks.budget, "model_screen": self.hooks.model_screen,
                 **{f"observers[{index}]": observer for index, observer in enumerate(self.hooks.observers)}}
        return {name: party for name, party in named.items() if isinstance(party, HostParty)}

    def run_rounds(self, round_function, carried: tuple) -> tuple:
        """Runs the rounds left (until the budget stops them), checkpointing on the interval and
        after the last; returns the final ``(server state, stage states, heads)``."""
        budget, rounds = self.hooks.budget, range(self.next_round, self.federation.config.rounds)
        with progress_bar("rounds", total=len(rounds)) as advance:  # run_round waits for each round
            for round_index in rounds:
                if budget is not None and (reason := budget.stop_reason(round_index)):
                    logger.info("training stopped before round %d: %s", round_index, reason)
                    self.stop_reason = reason
                    break
                carried = self.run_round(round_function, round_index, *carried)
                self.checkpoint(carried, always=False)
                if advance is not None:
                    advance(1)
        self.checkpoint(carried, always=True)
        return carried

    def resume_or_start(self, params: Params, carried: tuple) -> tuple:
        """The carried state ``(server state, stage states, heads)`` to start from: the newest
        checkpoint's when there is one (the loop's records and the parties restored with it),
        else ``carried``, checkpointed as the state before round 0."""
        if self.checkpoints is None:
            return carried
        config = self.federation.config
        self.training_facts = {"rounds": config.rounds, "num_clients": self.federation.num_clients,
                               "observe_rounds": sorted(self.observe_rounds),
                               "initial_params_sha256": params_sha256(params)}
        restored = self.checkpoints.latest()
        if restored is None:
            self.checkpoint(carried, always=True)
            return carried
        where = self.checkpoints.directory / str(restored.step)
        check_same("training setup", restored.training, self.training_facts, where)
        carried = self.restore(restored.payload, where)
        self.rounds_completed = self.resumed_from_round = restored.step
        logger.info("training resumes at round %d from %s", restored.step, where)
        return carried

    def checkpoint(self, carried: tuple, *, always: bool) -> None:
        """Checkpoints the state after ``rounds_completed`` rounds when due on the interval, or ``always``."""
        if self.checkpoints is None or not (always or self.checkpoints.due(self.rounds_completed)):
            return
        state, stage_states, heads = carried
        payload = {"server_state": state, "stage_states": stage_states, "heads": heads,
                   "observations": self.observations, "observed_data": self.observed_data, "seconds": self.seconds,
                   "stats": self.stats, "stop_reason": self.stop_reason, "rounds_aborted": self.rounds_aborted,
                   "parties": {name: party.checkpoint_state() for name, party in self.parties().items()}}
        self.checkpoints.save(self.rounds_completed, payload, self.training_facts)

    def restore(self, payload: dict, where) -> tuple:
        """Puts the loop's records and the parties back as the checkpoint holds them."""
        parties = self.parties()
        if set(parties) != set(payload["parties"]):
            raise CheckpointMismatchError(f"checkpoint {where} holds the state of parties "
                                          f"{sorted(payload['parties'])}, this run has {sorted(parties)}: "
                                          "resume with the same defenses and hooks")
        for name, party in parties.items():
            party.restore_state(payload["parties"][name])
        self.observations, self.observed_data = payload["observations"], payload["observed_data"]
        self.seconds, self.stats = payload["seconds"], payload["stats"]
        self.stop_reason, self.rounds_aborted = payload["stop_reason"], payload["rounds_aborted"]
        return payload["server_state"], payload["stage_states"], payload["heads"]

    def initial_heads(self, params: Params):
        if not self.federation.config.private_head:
            return None
        _, head = self.federation.model.split_params(params)
        count = self.federation.num_clients
        return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (count, *leaf.shape)), head)

    def participants(self, round_index: int, params: Params) -> np.ndarray:
        config = self.federation.config
        participating = sample_clients(jax.random.fold_in(self.keys.sampling, round_index),
                                       self.federation.num_clients, config.clients_per_round,
                                       config.client_sampling_rate)
        if self.hooks.model_screen is not None:
            participating = participating & np.asarray(
                self.hooks.model_screen.accepts(round_index, participating, params), bool)
        return participating

    def run_round(self, round_function, round_index: int, state, stage_states, heads):
        federation = self.federation
        participating = self.participants(round_index, state.params)
        client_data = self.data(round_index, participating)
        client_keys = jax.random.split(jax.random.fold_in(self.keys.clients, round_index), federation.num_clients)
        start = time.perf_counter()
        outcome = round_function(state, client_data, client_keys, stage_states,
                                 federation.plan.round_noise(round_index).traced(), heads)
        if heads is not None:  # each participant keeps its own trained head
            heads = jax.tree_util.tree_map(lambda head, update: head + update, heads, outcome.reports.kept_update)
        jax.block_until_ready(outcome.state.params)
        self.seconds.append(time.perf_counter() - start)
        self.rounds_aborted += int(outcome.aborted)
        self.stats.append({**outcome.stats, "aborted": outcome.aborted})
        for observer in self.hooks.observers:
            observer.after_round(round_index, participating, outcome)
        logger.debug("round %d took %.3f s", round_index, self.seconds[-1])
        if round_index in self.observe_rounds:
            self.record(round_index, state.params, participating, outcome, client_data)
        self.rounds_completed = round_index + 1
        return outcome.state, outcome.stage_states, heads

    def record(self, round_index: int, sent_params: Params, participating: np.ndarray, outcome, client_data) -> None:
        """What the attacker sees this round: per-client updates, or only the aggregate."""
        federation = self.federation
        aggregated = federation.pipeline.observes_aggregate
        if aggregated:
            updates, client_ids = outcome.observed, ()
        else:
            present = np.flatnonzero(participating)
            updates = jax.tree_util.tree_map(lambda u: u[present], outcome.observed)
            client_ids = tuple(int(c) for c in present)
        self.observations[round_index] = Observation(
            params=sent_params, updates=updates, aggregated=aggregated, round_index=round_index,
            metadata=federation.config.protocol(federation.model, client_ids))
        self.observed_data[round_index] = client_data


def _with_private_head(client_update, head_names: tuple[str, ...]):
    """The client function of a partitioned model: the client trains the global feature
    extractor together with its own head, sends only the extractor's update and keeps
    the head's (in its report's ``kept_update``, never aggregated)."""
    def partitioned_update(params, examples, example_mask, key, noise_multiplier=None, head=None):
        update, report = client_update({**params, **head}, examples, example_mask, key, noise_multiplier)
        shared = {name: (jax.tree_util.tree_map(jnp.zeros_like, leaf) if name in head_names else leaf)
                  for name, leaf in update.items()}
        return shared, dataclasses.replace(report, kept_update={name: update[name] for name in head_names})
    return partitioned_update


def _with_update_stages(client_update, stages: tuple[UpdateStage, ...]):
    """The client function followed by the hospital's own transforms of its update, in
    order, each keyed by its own split of the client's key (so every client's noise differs)."""
    def transformed_update(params, examples, example_mask, key, noise_multiplier=None, *per_client):
        training_key, *stage_keys = jax.random.split(key, len(stages) + 1)
        update, report = client_update(params, examples, example_mask, training_key, noise_multiplier, *per_client)
        for stage, stage_key in zip(stages, stage_keys):
            transform = stage.transform(stage_key)
            update, _ = transform.update(update, transform.init(update))
        return update, report
    return transformed_update
