"""Deep Leakage from Gradients (Zhu, Liu, Han 2019, arXiv 1906.08935).

DLG finds dummy inputs and dummy labels whose simulated client update matches the
observed one in squared L2 distance, ``||update(x, softmax(l)) - observed||^2``, jointly
over the inputs ``x`` and free label logits ``l`` (cross-entropy with soft targets), with
L-BFGS as in the paper. With labels known, or read off the update by iDLG (Zhao et al.
2020, arXiv 2001.02610), only the inputs are optimised.

The simulated update is the very client function the hospitals ran
(``fedpriv.federated.make_client_update``) on a soft-label copy of the model, so FedSGD
and multi-step FedAvg are one code path. A one-hot target gives exactly the integer-label
loss, so known labels go through the same program.

How the work is compiled is an ``AttackCompilation`` choice (shared with Inverting
Gradients) and never changes the numbers beyond float tolerance: a host loop over one
jitted iteration or ``lax.scan`` chunks; all (victim, restart) candidates under ``vmap``,
``lax.map``, or one at a time. The compiled programs are cached per attack setting, so
a second victim or round does not compile again.

References:
  Zhu, Liu, Han. "Deep Leakage from Gradients", NeurIPS 2019, arXiv:1906.08935.
  Zhao, Mopuri, Bilen. "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610.
  Liu, Nocedal. "On the limited memory BFGS method for large scale optimization",
  Math. Programming 45, 1989 (L-BFGS; no arXiv version).
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
from fedpriv.attacks.common import squared_distance, validate_observation
from fedpriv.attacks.inverting_gradients import AttackCompilation
from fedpriv.attacks.labels import attack_labels
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.typing import Model, Observation, ProtocolMetadata, Reconstruction

OPTIMIZERS = ("lbfgs", "adam")
INITIALISATIONS = ("normal", "uniform")
LABEL_STRATEGIES = ("joint", "known", "idlg", "counts")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DLGConfig:
    """DLG's hyperparameters (Zhu et al. 2019; PyTorch's L-BFGS there runs up to 20 inner
    iterations per step, so their 300 steps are up to 6000 of the iterations counted here).

    Attributes:
      iterations: optimiser iterations per candidate (one L-BFGS iteration is one
        direction and one zoom line search of up to ``max_linesearch_steps`` evaluations).
      optimizer: ``"lbfgs"`` (the paper's choice) or ``"adam"``.
      learning_rate: Adam's step size; for L-BFGS a fixed scale of the direction before
        the line search, ``None`` leaves it to the line search alone.
      memory_size: L-BFGS history length (100, as PyTorch's ``LBFGS`` that DLG uses; with
        10, DLG's LeNet converged about three times slower, measured).
      max_linesearch_steps: evaluations allowed per zoom line search.
      restarts: independent initialisations per victim; the one with the lowest final
        objective is returned.
      init: dummy inputs ``"uniform"`` on ``[0, 1]`` (the image range; measured to reach
        30 dB on DLG's LeNet in about half the iterations) or standard ``"normal"`` (DLG's
        reference code); free label logits always start standard normal.
      label_strategy: ``"joint"`` optimises soft labels with the inputs (DLG);
        ``"known"`` takes labels as side knowledge; ``"idlg"`` reads them off the update
        (batch of one only).
      record_every: record the objective every this many iterations.
    """

    iterations: int = 1000
    optimizer: str = "lbfgs"
    learning_rate: float | None = None
    memory_size: int = 100
    max_linesearch_steps: int = 20
    restarts: int = 1
    init: str = "uniform"
    label_strategy: str = "joint"
    record_every: int = 10

    kind: ClassVar[str] = "images"
    needs_public_images: ClassVar[bool] = False

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """The attack on ``model``'s observed updates (see ``fedpriv.attacks.protocol``)."""
        def recover(observation, key, victims, side: SideKnowledge):
            return deep_leakage(observation, model, self, key, victims=victims, labels=side.labels,
                                compilation=public.compilation)
        return Attack(kind=self.kind, model=model, iterations=self.iterations * self.restarts, recover=recover,
                      needs_known_labels=self.label_strategy == "known")

    def __post_init__(self):
        for name in ("iterations", "memory_size", "max_linesearch_steps", "restarts", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer == "adam" and self.learning_rate is None:
            raise ValueError("learning_rate must be a number > 0 for optimizer 'adam', got None")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 or None, got {self.learning_rate!r}")
        if self.init not in INITIALISATIONS:
            raise ValueError(f"init must be one of {INITIALISATIONS}, got {self.init!r}")
        if self.label_strategy not in LABEL_STRATEGIES:
            raise ValueError(f"label_strategy must be one of {LABEL_STRATEGIES}, got {self.label_strategy!r}")


def soft_label_model(model: Model) -> Model:
    """The same model with a cross-entropy that takes probability targets ``y [B, K]``.

    DLG's dummy labels are distributions; a one-hot target reproduces the integer-label
    loss exactly, so one program serves learned and known labels.
    """

    def per_example_loss(params, batch):
        return optax.softmax_cross_entropy(model.apply(params, batch["x"]), batch["y"])

    return dataclasses.replace(model, per_example_loss=per_example_loss, name=f"{model.name}-soft-labels")


def _make_objective(model: Model, metadata: ProtocolMetadata, config: DLGConfig):
    simulate = make_client_update(soft_label_model(model), LocalTrainingConfig(
        learning_rate=metadata.learning_rate, optimizer=metadata.local_optimizer, momentum=metadata.local_momentum))
    mask = jnp.ones((metadata.local_steps, metadata.batch_size), jnp.float32)

    def objective(variables, fixed_targets, target, params):
        if config.label_strategy == "joint":
            label_targets = jax.nn.softmax(variables["label_logits"], axis=-1)
        else:
            label_targets = fixed_targets
        update, _ = simulate(params, {"x": variables["inputs"], "y": label_targets}, mask, jax.random.key(0))
        return squared_distance(update, target)

    return objective


def _make_optimizer(config: DLGConfig):
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    return optax.lbfgs(learning_rate=config.learning_rate, memory_size=config.memory_size,
                       linesearch=optax.scale_by_zoom_linesearch(
                           max_linesearch_steps=config.max_linesearch_steps, initial_guess_strategy="one"))


@functools.lru_cache(maxsize=16)
def _compiled_programs(model: Model, metadata: ProtocolMetadata, config: DLGConfig,
                       compilation: AttackCompilation):
    """The jitted programs of one DLG setting, cached so other victims and rounds reuse them."""
    objective = _make_objective(model, metadata, config)
    optimizer = _make_optimizer(config)

    def step(state, candidate, params):
        variables, optimizer_state = state
        fixed_targets, target = candidate
        value_fn = lambda v: objective(v, fixed_targets, target, params)  # noqa: E731
        if config.optimizer == "lbfgs":
            # The line search already evaluated the objective and gradient at the new point.
            value, gradient = optax.value_and_grad_from_state(value_fn)(variables, state=optimizer_state)
            updates, new_state = optimizer.update(gradient, optimizer_state, variables, value=value,
                                                  grad=gradient, value_fn=value_fn)
        else:
            value, gradient = jax.value_and_grad(value_fn)(variables)
            updates, new_state = optimizer.update(gradient, optimizer_state, variables)
        new_variables = optax.apply_updates(variables, updates)
        # At an exact match the curvature pairs vanish and L-BFGS can divide 0 by 0; a
        # candidate that reached a non-finite point keeps its last finite state.
        leaves = jax.tree_util.tree_leaves(new_variables)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        return (keep(new_variables, variables), keep(new_state, optimizer_state)), value

    return types.SimpleNamespace(
        optimizer=optimizer, runner=make_runner(step, compilation),
        evaluate=jax.jit(jax.vmap(objective, in_axes=(0, 0, 0, None))))


def _program_key(config: DLGConfig) -> DLGConfig:
    """The config with the fields the compiled programs do not depend on set to defaults,
    so attacks that differ only in iterations, restarts or initialisation share programs."""
    return dataclasses.replace(config, iterations=1, restarts=1, init="normal", record_every=1)


def _strong(tree):
    """Drops weak types, which optax's initial states carry and updated states do not;
    without this the first iteration would compile a second program."""
    return jax.tree_util.tree_map(lambda a: jax.lax.convert_element_type(a, jnp.asarray(a).dtype), tree)


def _candidate_starts(config: DLGConfig, key, victims, labels, candidate_victim, input_shape, num_classes):
    """Each (victim, restart) candidate's starting variables and its one-hot label targets.

    A candidate's key depends only on its victim's position and its restart, so a victim
    gets the same reconstruction whether attacked alone or with others.
    """
    num_candidates, data_shape = candidate_victim.size, input_shape[:2]
    candidate_keys = jnp.stack([jax.random.split(jax.random.fold_in(key, victim), 2 * config.restarts)
                                for victim in victims]).reshape(num_candidates, 2)
    input_keys, label_keys = candidate_keys[:, 0], candidate_keys[:, 1]
    draw = jax.random.normal if config.init == "normal" else jax.random.uniform
    variables = {"inputs": jax.vmap(lambda k: draw(k, input_shape))(input_keys)}
    if config.label_strategy == "joint":
        variables["label_logits"] = jax.vmap(lambda k: jax.random.normal(k, (*data_shape, num_classes)))(label_keys)
        fixed_targets = jnp.zeros((num_candidates, *data_shape, num_classes), jnp.float32)  # unused
    else:
        fixed_targets = jax.nn.one_hot(jnp.asarray(labels[candidate_victim]), num_classes)
    return variables, fixed_targets


def deep_leakage(observation: Observation, model: Model, config: DLGConfig, key: jax.Array, *,
                 victims: Sequence[int], labels: np.ndarray | None = None,
                 compilation: AttackCompilation = AttackCompilation()) -> Reconstruction:
    """Reconstructs each victim's local inputs (and labels) by L2 gradient matching.

    Args:
      observation: the server's view of one round (per-client updates).
      model: the model the federation trains.
      config: attack hyperparameters.
      key: the attack's key stream (dummy inputs and label logits).
      victims: positions of the victims on the observed client axis.
      labels: ``[V, S, B]`` integer labels when ``config.label_strategy == "known"``
        (for a batch, e.g. from ``fedpriv.attacks.labels.labels_from_counts``).
      compilation: how loops and the candidate axis are compiled.

    Returns:
      A ``Reconstruction`` with the restart of lowest final objective per victim; its
      labels are the argmax of the learned soft labels under ``"joint"``.

    Raises:
      ValueError: bad victims, an observation that does not fit the model, an aggregate
        observation, missing or misshapen labels, or iDLG at batch > 1; all before any
        compute.

    References:
      Zhu, Liu, Han. "Deep Leakage from Gradients", NeurIPS 2019, arXiv:1906.08935.
    """
    validate_observation(observation, model, victims)
    if observation.aggregated:
        raise ValueError("DLG needs per-client updates; this observation holds only an aggregate")
    victims = tuple(int(v) for v in victims)
    if not victims:
        raise ValueError("victims must name at least one observed client")
    metadata = observation.metadata
    data_shape = (metadata.local_steps, metadata.batch_size)
    num_classes = metadata.num_classes
    if config.label_strategy != "joint":
        labels = attack_labels(observation, model, victims, config.label_strategy, labels)

    programs = _compiled_programs(model, dataclasses.replace(metadata, client_ids=()), _program_key(config),
                                  compilation)

    # Candidates are (victim, restart) pairs, victim-major.
    candidate_victim = np.repeat(np.arange(len(victims)), config.restarts)
    variables, fixed_targets = _candidate_starts(config, key, victims, labels, candidate_victim,
                                                 (*data_shape, *metadata.input_shape), num_classes)
    observed = jax.tree_util.tree_map(lambda u: u[np.asarray(victims)], observation.updates)
    targets = jax.tree_util.tree_map(lambda u: u[candidate_victim], observed)

    final, values = run_candidates(programs.runner, lambda start: _strong(programs.optimizer.init(start)),
                                   variables, (fixed_targets, targets), observation.params, config.iterations,
                                   compilation)
    # values: [iterations, candidates]
    final_objective = np.asarray(programs.evaluate(final, fixed_targets, targets, observation.params))
    final_objective = np.where(np.isfinite(final_objective), final_objective, np.inf)
    final_objective = final_objective.reshape(len(victims), config.restarts)
    best = np.argmin(final_objective, axis=1)
    chosen = np.arange(len(victims)) * config.restarts + best
    if config.label_strategy == "joint":
        labels = np.asarray(jnp.argmax(final["label_logits"], axis=-1))[chosen]
    trace = np.asarray(values).T.reshape(len(victims), config.restarts, -1)[..., ::config.record_every]
    return Reconstruction(inputs=np.asarray(final["inputs"])[chosen],
                          labels=np.asarray(labels, np.int32),
                          objective=final_objective[np.arange(len(victims)), best],
                          trace=trace, victims=victims)
