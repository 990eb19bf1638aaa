"""Inverting Gradients (Geiping et al. 2020, arXiv 2003.14053).

Finds inputs whose simulated client update points the same way as the observed one:
minimise ``1 - cos(update(x), observed) + tv_weight * TV(x)`` with Adam on the sign of
the gradient, learning-rate decay by 10 at 3/8, 5/8 and 7/8 of the iterations, and a
box constraint. The simulated update is the very client function the hospitals ran
(``fedpriv.federated.make_client_update``) built from the public protocol, so FedSGD
and multi-step FedAvg are one code path.

How the work is compiled is an ``AttackCompilation`` choice carried out by the shared
optimiser (``fedpriv.attacks._optimiser``) and never changes the numbers beyond float
tolerance (DESIGN §5): ConvNets on CPU prefer host/loop; small MLPs and LeNet scan/vmap.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.attacks._optimiser import make_runner, run_candidates
from fedpriv.attacks.common import (cosine_distance, observed_part, squared_distance, total_variation,
                                    validate_observation)
from fedpriv.attacks.labels import attack_labels
from fedpriv.attacks.probing import ProbingConfig, class_prototypes, prototype_start
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.typing import Model, Observation, ProtocolMetadata, Reconstruction

DISTANCES = ("cosine", "l2")
INITIALISATIONS = ("uniform", "normal", "public_mean", "prototype")
# Half-width of the uniform jitter around the public mean or prototype, so restarts start apart.
PUBLIC_MEAN_JITTER = 0.1
LABEL_STRATEGIES = ("known", "idlg", "counts")
ATTACK_LOOPS = ("host", "scan")
ATTACK_BATCHINGS = ("vmap", "map", "loop")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InvertingGradientsConfig:
    """The attack's hyperparameters (defaults follow Geiping et al. 2020, Sec. 4).

    Attributes:
      iterations: optimisation steps per candidate.
      learning_rate: Adam step size before decay.
      tv_weight: weight of the total-variation prior.
      restarts: independent random initialisations per victim; the one with the lowest
        final objective is returned.
      distance: ``"cosine"`` (IG) or ``"l2"`` (DLG).
      signed_gradients: Adam on the sign of the gradient.
      step_decay: divide the step by 10 at 3/8, 5/8 and 7/8 of the iterations.
      box: ``(low, high)`` pixel range enforced after every step, or ``None``.
      init: ``"uniform"`` in the box, standard ``"normal"``, or ``"public_mean"``: the
        mean of the attacker's public images (other patients, never the cohort's) plus
        uniform jitter of +-``PUBLIC_MEAN_JITTER``, the prior an attacker on CT slices has, or
        ``"prototype"``: the class prototype of each slot's label, inverted from the observed
        global model (``fedpriv.attacks.probing``), plus the same jitter.
      prototype: how class prototypes are inverted (``init="prototype"`` or a prior term).
      prototype_weight: weight of the mean squared distance to each slot's prototype added
        to the objective (0: no prior term).
      label_strategy: ``"known"`` (labels given as side knowledge), ``"idlg"`` (batch of
        one) or ``"counts"`` (iLRG-style label counts of a FedSGD batch).
      record_every: record the objective every this many iterations.
    """

    iterations: int = 2000
    learning_rate: float = 0.1
    tv_weight: float = 1e-4
    restarts: int = 1
    distance: str = "cosine"
    signed_gradients: bool = True
    step_decay: bool = True
    box: tuple[float, float] | None = (0.0, 1.0)
    init: str = "uniform"
    prototype: ProbingConfig = ProbingConfig()
    prototype_weight: float = 0.0
    label_strategy: str = "idlg"
    record_every: int = 10

    kind: ClassVar[str] = "images"

    @property
    def uses_prototypes(self) -> bool:
        return self.init == "prototype" or self.prototype_weight > 0

    @property
    def needs_public_images(self) -> bool:
        return self.init == "public_mean" or (self.uses_prototypes and self.prototype.start == "public_mean")

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """The attack on ``model``'s observed updates (see ``fedpriv.attacks.protocol``)."""
        if self.needs_public_images and public.images is None:
            raise ValueError(f"attack.config.init {self.init!r} (prototype start {self.prototype.start!r}) needs "
                             "the attacker's public images")
        public_mean = None if public.images is None else np.mean(public.images, axis=0)

        def recover(observation, key, victims, side: SideKnowledge):
            return invert_gradients(observation, model, self, key, victims=victims, labels=side.labels,
                                    compilation=public.compilation, public_mean=public_mean)
        return Attack(kind=self.kind, model=model, iterations=self.iterations * self.restarts, recover=recover,
                      needs_known_labels=self.label_strategy == "known")

    def __post_init__(self):
        if isinstance(self.box, list):  # YAML gives lists; keep the config hashable
            object.__setattr__(self, "box", tuple(self.box))
        for name in ("iterations", "restarts", "record_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.tv_weight >= 0:
            raise ValueError(f"tv_weight must be >= 0, got {self.tv_weight!r}")
        if not self.prototype_weight >= 0:
            raise ValueError(f"attack.config.prototype_weight must be >= 0, got {self.prototype_weight!r}")
        if isinstance(self.prototype, dict):  # a YAML mapping without _target_
            object.__setattr__(self, "prototype", ProbingConfig(**self.prototype))
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.init not in INITIALISATIONS:
            raise ValueError(f"init must be one of {INITIALISATIONS}, got {self.init!r}")
        if self.label_strategy not in LABEL_STRATEGIES:
            raise ValueError(f"label_strategy must be one of {LABEL_STRATEGIES}, got {self.label_strategy!r}")
        if self.box is not None and not (len(self.box) == 2 and self.box[0] < self.box[1]):
            raise ValueError(f"box must be (low, high) with low < high or None, got {self.box!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackCompilation:
    """How the attack is compiled (an ``impl`` choice; results agree within tolerance)."""

    loop: str = "host"
    scan_chunk: int = 50
    batching: str = "loop"

    def __post_init__(self):
        if self.loop not in ATTACK_LOOPS:
            raise ValueError(f"loop must be one of {ATTACK_LOOPS}, got {self.loop!r}")
        if self.batching not in ATTACK_BATCHINGS:
            raise ValueError(f"batching must be one of {ATTACK_BATCHINGS}, got {self.batching!r}")
        if not (isinstance(self.scan_chunk, int) and self.scan_chunk >= 1):
            raise ValueError(f"scan_chunk must be an integer >= 1, got {self.scan_chunk!r}")


def _learning_rate_schedule(config: InvertingGradientsConfig):
    if not config.step_decay:
        return config.learning_rate
    boundaries = {int(config.iterations * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def make_gradient_matching_objective(model: Model, metadata: ProtocolMetadata, *, distance: str = "cosine",
                                     tv_weight: float = 0.0):
    """The gradient-matching objective of Inverting Gradients, shared by attacks that
    search another space (e.g. a generative prior's latents) but match the same way.

    Args:
      model: the model the federation trains.
      metadata: the public protocol; the simulated update is the hospitals' own client
        function (``make_client_update``) built from it.
      distance: ``"cosine"`` (IG) or ``"l2"`` (DLG).
      tv_weight: weight of the total-variation prior on the inputs.

    Returns:
      ``objective(inputs [S, B, ...], labels [S, B], target update, params) ->
      (matching + tv_weight * TV(inputs), matching)``.

    References:
      Geiping et al. 2020, arXiv 2003.14053; Zhu et al. 2019, arXiv 1906.08935.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    # Several local steps: recompute each step's activations in the backward pass, so the
    # attack's memory does not grow with the steps it differentiates through.
    simulate = make_client_update(model, LocalTrainingConfig(
        learning_rate=metadata.learning_rate, optimizer=metadata.local_optimizer, momentum=metadata.local_momentum,
        rematerialize=metadata.local_steps > 1))
    mask = jnp.ones((metadata.local_steps, metadata.batch_size), jnp.float32)
    distance_fn = cosine_distance if distance == "cosine" else squared_distance

    def objective(inputs, labels, target, params):
        update, _ = simulate(params, {"x": inputs, "y": labels}, mask, jax.random.key(0))
        matching = distance_fn(observed_part(update, metadata), observed_part(target, metadata))
        return matching + tv_weight * total_variation(inputs), matching

    return objective


def _make_objective(model: Model, metadata: ProtocolMetadata, config: InvertingGradientsConfig):
    """``objective(inputs, labels, target, anchor, params)``: gradient matching, plus the
    mean squared distance to ``anchor`` (the slot's class prototype) when
    ``config.prototype_weight > 0``; without it ``anchor`` is ``None`` and unused, so the
    program is the one of plain Inverting Gradients."""
    matching = make_gradient_matching_objective(model, metadata, distance=config.distance,
                                                tv_weight=config.tv_weight)
    if config.prototype_weight == 0:
        return lambda inputs, labels, target, anchor, params: matching(inputs, labels, target, params)

    def anchored(inputs, labels, target, anchor, params):
        value, distance = matching(inputs, labels, target, params)
        return value + config.prototype_weight * jnp.mean((inputs - anchor) ** 2), distance

    return anchored


@functools.lru_cache(maxsize=16)
def _compiled_programs(model: Model, metadata: ProtocolMetadata, config: InvertingGradientsConfig,
                       compilation: AttackCompilation):
    """The jitted programs of one attack setting, cached so later calls (other victims,
    other rounds, benchmarks) reuse them instead of compiling again."""
    objective = _make_objective(model, metadata, config)
    optimizer = optax.adam(_learning_rate_schedule(config))
    low, high = config.box if config.box is not None else (-jnp.inf, jnp.inf)

    def step(state, candidate, params):
        inputs, optimizer_state = state
        labels_, target, anchor = candidate
        (value, _), gradient = jax.value_and_grad(objective, has_aux=True)(inputs, labels_, target, anchor, params)
        if config.signed_gradients:
            gradient = jnp.sign(gradient)
        updates, optimizer_state = optimizer.update(gradient, optimizer_state, inputs)
        inputs = jnp.clip(optax.apply_updates(inputs, updates), low, high)
        return (inputs, optimizer_state), value

    return types.SimpleNamespace(
        optimizer=optimizer, low=low, high=high, runner=make_runner(step, compilation),
        evaluate=jax.jit(jax.vmap(objective, in_axes=(0, 0, 0, 0, None))))


def invert_gradients(observation: Observation, model: Model, config: InvertingGradientsConfig,
                     key: jax.Array, *, victims: Sequence[int], labels: np.ndarray | None = None,
                     compilation: AttackCompilation = AttackCompilation(),
                     public_mean: np.ndarray | None = None) -> Reconstruction:
    """Reconstructs each victim's local data from its observed update.

    Args:
      observation: the server's view of one round (per-client updates).
      model: the model the federation trains.
      config: attack hyperparameters.
      key: the attack's key stream (initialisations).
      victims: positions of the victims on the observed client axis.
      labels: ``[V, S, B]`` labels when ``config.label_strategy == "known"``.
      compilation: how loops and the candidate axis are compiled.
      public_mean: ``input_shape`` mean public image, needed by ``init="public_mean"`` and
        by prototypes that start from it.

    Returns:
      A ``Reconstruction`` with the best restart per victim.

    Raises:
      ValueError: bad victims, mismatched observation, missing labels, or a label
        strategy that needs batch 1 at batch > 1; all before any compute.
    """
    validate_observation(observation, model, victims)
    metadata = observation.metadata
    if observation.aggregated:
        raise ValueError("inverting gradients needs per-client updates; this observation holds only an aggregate")
    victims = tuple(int(v) for v in victims)
    if not victims:
        raise ValueError("victims must name at least one observed client")
    data_shape = (metadata.local_steps, metadata.batch_size)
    labels = attack_labels(observation, model, victims, config.label_strategy, labels)

    # client_ids differ between rounds but not the programs: leave them out of the cache key.
    programs = _compiled_programs(model, dataclasses.replace(metadata, client_ids=()), config, compilation)
    low, high = programs.low, programs.high

    # Candidates are (victim, restart) pairs, victim-major.
    candidate_victim = np.repeat(np.arange(len(victims)), config.restarts)
    num_candidates = candidate_victim.size
    input_shape = (*data_shape, *metadata.input_shape)
    anchors = None
    if config.uses_prototypes:  # inverted from the very params the server sent this round
        prototypes = class_prototypes(model, observation.params, config.prototype, public_mean)
        anchors = jnp.asarray(prototype_start(prototypes, labels)[candidate_victim])
    initial = _initial_inputs(config, jax.random.split(key, num_candidates), input_shape, public_mean, anchors,
                              (low, high))
    observed = jax.tree_util.tree_map(lambda u: u[np.asarray(victims)], observation.updates)
    targets = jax.tree_util.tree_map(lambda u: u[candidate_victim], observed)
    candidate_labels = jnp.asarray(labels[candidate_victim])

    final_inputs, values = run_candidates(programs.runner, programs.optimizer.init, initial,
                                          (candidate_labels, targets, anchors), observation.params,
                                          config.iterations, compilation)
    # values: [iterations, candidates]
    final_objective, _ = programs.evaluate(final_inputs, candidate_labels, targets, anchors, observation.params)

    final_objective = np.asarray(final_objective).reshape(len(victims), config.restarts)
    best = np.argmin(final_objective, axis=1)
    inputs = np.asarray(final_inputs).reshape(len(victims), config.restarts, *input_shape)
    trace = np.asarray(values).T.reshape(len(victims), config.restarts, -1)[..., ::config.record_every]
    return Reconstruction(inputs=inputs[np.arange(len(victims)), best],
                          labels=np.asarray(labels, np.int32),
                          objective=final_objective[np.arange(len(victims)), best],
                          trace=trace, victims=victims)


def _initial_inputs(config: InvertingGradientsConfig, init_keys: jax.Array, input_shape: tuple[int, ...],
                    public_mean: np.ndarray | None, anchors: jax.Array | None, box: tuple) -> jax.Array:
    """Each candidate's start ``[N, *input_shape]`` under ``config.init``."""
    low, high = box
    jitter = lambda: jax.vmap(lambda k: jax.random.uniform(k, input_shape, minval=-PUBLIC_MEAN_JITTER,
                                                           maxval=PUBLIC_MEAN_JITTER))(init_keys)
    if config.init == "prototype":
        return jnp.clip(anchors + jitter(), low, high)
    if config.init == "public_mean":
        if public_mean is None or tuple(np.shape(public_mean)) != tuple(input_shape[2:]):
            raise ValueError(f"init 'public_mean' needs public_mean of shape {tuple(input_shape[2:])}, got "
                             f"{None if public_mean is None else np.shape(public_mean)}")
        return jnp.clip(jnp.asarray(public_mean, jnp.float32) + jitter(), low, high)
    if config.init == "uniform" and config.box is not None:
        return jax.vmap(lambda k: jax.random.uniform(k, input_shape, minval=low, maxval=high))(init_keys)
    return jax.vmap(lambda k: jax.random.normal(k, input_shape))(init_keys)
