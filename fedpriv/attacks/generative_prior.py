"""Gradient inversion with a generative image prior (GIAS, Jeon et al. 2021, arXiv 2110.14962).

Pixel-space Inverting Gradients searches all of ``[0, 1]^(H x W x C)``; this attack
searches only images a decoder trained on public data can produce
(``fedpriv.attacks.image_prior``), with the same matching objective
(``1 - cos(update(x), observed) + tv_weight * TV(x)``, the hospitals' own client
function, so FedSGD and multi-step FedAvg are one code path). Two stages, as GIAS:

1. Latent search (GI-z): ``z* = argmin_z match(G_w0(z)) + latent_weight * mean(z^2)``
   with Adam, starting from ``z ~ N(0, latent_init_std^2 I)``; the penalty is the VAE's
   standard-normal prior on ``z`` (scaled per coordinate so its weight does not depend
   on the latent size).
2. Parameter search (GI-w, optional): with ``z*`` fixed, fine-tune a private copy of the
   decoder, ``w* = argmin_w match(G_w(z*)) + parameter_weight * ||w - w0||^2``, with a
   small step, so the decoder can reach images slightly outside its range (the public
   images come from other patients and another scanner) while staying near the prior.

A low-dimensional search space is what makes the prior robust: with DP noise on the
update, pixel-space search fits the noise, the latent search cannot.

Restarts and victims are batched as in ``fedpriv.attacks.inverting_gradients``: the
candidates are (victim, restart) pairs, compiled as ``AttackCompilation`` says, and
the programs of one setting are cached so a second victim or round does not recompile.

Deviation from GIAS: in batches (``local_steps * batch_size > 1``) GIAS fine-tunes one
decoder copy per image; here one copy per candidate is shared by all its images.
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
from fedpriv.attacks.common import validate_observation
from fedpriv.attacks.image_prior import ImagePrior, make_decode
from fedpriv.attacks.inverting_gradients import (DISTANCES, LABEL_STRATEGIES, AttackCompilation,
                                                 make_gradient_matching_objective)
from fedpriv.attacks.labels import attack_labels
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.typing import Model, Observation, ProtocolMetadata, Reconstruction


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerativePriorConfig:
    """The attack's hyperparameters.

    Attributes:
      latent_iterations: Adam steps of the latent search, >= 1.
      finetune_iterations: Adam steps of the decoder fine-tuning, >= 0 (0: latent only).
      learning_rate: latent step size before decay.
      finetune_learning_rate: decoder step size before decay.
      latent_weight: weight of ``mean(z^2)``, the negative log standard-normal prior, >= 0.
      parameter_weight: weight of ``||w - w0||^2`` during fine-tuning, >= 0.
      tv_weight: weight of the total-variation prior on the decoded images, >= 0.
      restarts: latent initialisations per victim; the lowest final objective wins.
      distance: ``"cosine"`` (IG) or ``"l2"`` (DLG).
      step_decay: divide each stage's step by 10 at 3/8, 5/8 and 7/8 of its iterations.
      latent_init_std: standard deviation of the initial latents, > 0.
      label_strategy: ``"known"`` (labels given as side knowledge) or ``"idlg"``.
      record_every: record the objective every this many iterations.

    Raises:
      ValueError: on construction, naming the field, the value and what is allowed.

    References:
      Jeon et al. 2021, arXiv 2110.14962 (GI-z then GI-w).
    """

    latent_iterations: int = 1000
    finetune_iterations: int = 0
    learning_rate: float = 0.05
    finetune_learning_rate: float = 1e-4
    latent_weight: float = 1e-3
    parameter_weight: float = 1e-2
    tv_weight: float = 0.0
    restarts: int = 1
    distance: str = "cosine"
    step_decay: bool = True
    latent_init_std: float = 1.0
    label_strategy: str = "idlg"
    record_every: int = 10

    kind: ClassVar[str] = "images"
    needs_public_images: ClassVar[bool] = True
    uses_prior: ClassVar[bool] = True  # the scenario trains ``attack.prior`` before the attack

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """The attack through ``public.prior`` (trained on public images before training)."""
        if public.prior is None:
            raise ValueError("a generative-prior inversion needs a prior: set attack.prior")
        def recover(observation, key, victims, side: SideKnowledge):
            return invert_with_prior(observation, model, public.prior, self, key, victims=victims,
                                     labels=side.labels, compilation=public.compilation)
        return Attack(kind=self.kind, model=model, iterations=self.iterations * self.restarts, recover=recover,
                      needs_known_labels=self.label_strategy == "known")

    def __post_init__(self):
        for name in ("latent_iterations", "restarts", "record_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.finetune_iterations, int) and not isinstance(self.finetune_iterations, bool)
                and self.finetune_iterations >= 0):
            raise ValueError(f"finetune_iterations must be an integer >= 0, got {self.finetune_iterations!r}")
        for name in ("learning_rate", "finetune_learning_rate", "latent_init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("latent_weight", "parameter_weight", "tv_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.label_strategy not in LABEL_STRATEGIES:
            raise ValueError(f"label_strategy must be one of {LABEL_STRATEGIES}, got {self.label_strategy!r}")

    @property
    def iterations(self) -> int:
        """Total optimisation steps per candidate (both stages): the budget to compare at."""
        return self.latent_iterations + self.finetune_iterations


def _schedule(learning_rate: float, iterations: int, step_decay: bool):
    if not step_decay:
        return learning_rate
    boundaries = {int(iterations * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)}
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def _squared_norm(tree) -> jax.Array:
    return sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=16)
def _compiled_programs(model: Model, metadata: ProtocolMetadata, prior_spec, config: GenerativePriorConfig,
                       compilation: AttackCompilation):
    """The jitted programs of one attack setting, cached so other victims and rounds reuse them."""
    objective = make_gradient_matching_objective(model, metadata, distance=config.distance,
                                                 tv_weight=config.tv_weight)
    decode = make_decode(prior_spec)
    latent_optimizer = optax.adam(_schedule(config.learning_rate, config.latent_iterations, config.step_decay))
    finetune_optimizer = optax.adam(_schedule(config.finetune_learning_rate, max(config.finetune_iterations, 1),
                                              config.step_decay))

    def latent_step(state, candidate, shared):
        latents, optimizer_state = state
        labels, target = candidate
        params, pretrained = shared

        def loss(z):
            value, _ = objective(decode(pretrained, z), labels, target, params)
            return value + config.latent_weight * jnp.mean(z**2), value

        (_, value), gradient = jax.value_and_grad(loss, has_aux=True)(latents)
        updates, optimizer_state = latent_optimizer.update(gradient, optimizer_state, latents)
        return (optax.apply_updates(latents, updates), optimizer_state), value

    def finetune_step(state, candidate, shared):
        decoder_params, optimizer_state = state
        labels, target, latents = candidate
        params, pretrained = shared

        def loss(w):
            value, _ = objective(decode(w, latents), labels, target, params)
            drift = jax.tree_util.tree_map(lambda a, b: a - b, w, pretrained)
            return value + config.parameter_weight * _squared_norm(drift), value

        (_, value), gradient = jax.value_and_grad(loss, has_aux=True)(decoder_params)
        updates, optimizer_state = finetune_optimizer.update(gradient, optimizer_state, decoder_params)
        return (optax.apply_updates(decoder_params, updates), optimizer_state), value

    def evaluate(decoder_params, latents, labels, target, params):
        inputs = decode(decoder_params, latents)
        value, _ = objective(inputs, labels, target, params)
        return inputs, value

    return types.SimpleNamespace(
        latent_optimizer=latent_optimizer, finetune_optimizer=finetune_optimizer,
        latent=make_runner(latent_step, compilation), finetune=make_runner(finetune_step, compilation),
        evaluate=jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, 0, None))))


def invert_with_prior(observation: Observation, model: Model, prior: ImagePrior, config: GenerativePriorConfig,
                      key: jax.Array, *, victims: Sequence[int], labels: np.ndarray | None = None,
                      compilation: AttackCompilation = AttackCompilation()) -> Reconstruction:
    """Reconstructs each victim's local data in the range of a generative prior (GIAS).

    Args:
      observation: the server's view of one round (per-client updates).
      model: the model the federation trains.
      prior: a decoder trained on public images (``train_image_prior``), whose images
        have the model's input shape.
      config: attack hyperparameters.
      key: the attack's key stream (latent initialisations).
      victims: positions of the victims on the observed client axis.
      labels: ``[V, S, B]`` labels when ``config.label_strategy == "known"``.
      compilation: how loops and the candidate axis are compiled (results agree within
        float tolerance).

    Returns:
      A ``Reconstruction`` with the best restart per victim; ``objective`` is the
      matching objective plus TV of the returned images (comparable with Inverting
      Gradients'), ``trace`` covers both stages.

    Raises:
      ValueError: bad victims, an aggregated or mismatched observation, a prior of
        another image shape, missing labels, or iDLG labels at batch > 1; all before
        any compute.

    References:
      Jeon, Kim, Lee, Oh, Ok. "Gradient Inversion with Generative Image Prior",
      NeurIPS 2021, arXiv 2110.14962.
      Geiping et al. "Inverting Gradients", NeurIPS 2020, arXiv 2003.14053.
    """
    validate_observation(observation, model, victims)
    metadata = observation.metadata
    if observation.aggregated:
        raise ValueError("the generative-prior attack needs per-client updates; this observation holds only "
                         "an aggregate")
    if tuple(prior.image_shape) != tuple(metadata.input_shape):
        raise ValueError(f"prior.image_shape {tuple(prior.image_shape)} does not match the observed input_shape "
                         f"{tuple(metadata.input_shape)}")
    victims = tuple(int(v) for v in victims)
    if not victims:
        raise ValueError("victims must name at least one observed client")
    data_shape = (metadata.local_steps, metadata.batch_size)
    labels = attack_labels(observation, model, victims, config.label_strategy, labels)

    # client_ids differ between rounds but not the programs: leave them out of the cache key.
    programs = _compiled_programs(model, dataclasses.replace(metadata, client_ids=()), prior.spec, config,
                                 compilation)

    candidate_victim = np.repeat(np.arange(len(victims)), config.restarts)
    num_candidates = candidate_victim.size
    initial = config.latent_init_std * jax.random.normal(key, (num_candidates, *data_shape, prior.latent_dim))
    observed = jax.tree_util.tree_map(lambda u: u[np.asarray(victims)], observation.updates)
    targets = jax.tree_util.tree_map(lambda u: u[candidate_victim], observed)
    candidate_labels = jnp.asarray(labels[candidate_victim])
    shared = (observation.params, prior.decoder_params)

    latents, values = run_candidates(programs.latent, programs.latent_optimizer.init, initial,
                                     (candidate_labels, targets), shared, config.latent_iterations, compilation)
    decoder_params = jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (num_candidates, *leaf.shape)),
                                            prior.decoder_params)
    if config.finetune_iterations:
        decoder_params, finetune_values = run_candidates(
            programs.finetune, programs.finetune_optimizer.init, decoder_params, (candidate_labels, targets, latents),
            shared, config.finetune_iterations, compilation)
        values = jnp.concatenate([values, finetune_values])
    final_inputs, final_objective = programs.evaluate(decoder_params, latents, candidate_labels, targets,
                                                      observation.params)

    final_objective = np.asarray(final_objective).reshape(len(victims), config.restarts)
    best = np.argmin(final_objective, axis=1)
    input_shape = (*data_shape, *metadata.input_shape)
    inputs = np.asarray(final_inputs).reshape(len(victims), config.restarts, *input_shape)
    trace = np.asarray(values).T.reshape(len(victims), config.restarts, -1)[..., ::config.record_every]
    chosen = np.arange(len(victims))
    return Reconstruction(inputs=inputs[chosen, best], labels=np.asarray(labels, np.int32),
                          objective=final_objective[chosen, best], trace=trace, victims=victims)
