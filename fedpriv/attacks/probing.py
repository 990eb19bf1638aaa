"""Model probing: what the released global model alone tells the attacker (issue #15).

Before it inverts any update, the attacker holds the model the server sends every
hospital. Model inversion of that model yields one *class prototype* per label: the input
the model finds most typical of the class (Fredrikson, Jha, Ristenpart, "Model Inversion
Attacks that Exploit Confidence Information and Basic Countermeasures", ACM CCS 2015,
doi:10.1145/2810103.2813677), with a total-variation prior as the image prior (Rudin,
Osher, Fatemi, Physica D 1992). No client data is used: only the params and, as a start,
the attacker's public images. Inverting Gradients starts from (``init="prototype"``) or is
pulled towards (``prototype_weight``) the prototype of the label it infers.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.attacks.common import total_variation
from fedpriv.typing import Model, Params

PROTOTYPE_STARTS = ("public_mean", "constant")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbingConfig:
    """How class prototypes are inverted from the global model (``attack.config.prototype``).

    Attributes:
      iterations: Adam steps of the inversion.
      learning_rate: Adam step size.
      tv_weight: weight of the total-variation prior per image.
      start: ``"public_mean"`` (the mean of the attacker's public images) or ``"constant"``
        (the middle of the box): the same start for every class, so what differs between
        prototypes comes from the model alone.
      box: ``(low, high)`` pixel range enforced after every step.
    """

    iterations: int = 200
    learning_rate: float = 0.01
    tv_weight: float = 0.1
    start: str = "public_mean"
    box: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if isinstance(self.box, list):  # YAML gives lists; keep the config hashable
            object.__setattr__(self, "box", tuple(self.box))
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise ValueError(f"attack.config.prototype.iterations must be an integer >= 1, got {self.iterations!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"attack.config.prototype.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.tv_weight >= 0:
            raise ValueError(f"attack.config.prototype.tv_weight must be >= 0, got {self.tv_weight!r}")
        if self.start not in PROTOTYPE_STARTS:
            raise ValueError(f"attack.config.prototype.start must be one of {PROTOTYPE_STARTS}, got {self.start!r}")
        if not (len(self.box) == 2 and self.box[0] < self.box[1]):
            raise ValueError(f"attack.config.prototype.box must be (low, high) with low < high, got {self.box!r}")


@functools.lru_cache(maxsize=8)
def _inversion_step(model: Model, config: ProbingConfig):
    """One jitted Adam step on all classes at once (cached per model and setting).

    The classes form one batch: the models carry no BatchNorm (DESIGN §2), so each
    prototype's gradient depends on its own image only.
    """
    optimizer = optax.adam(config.learning_rate)
    low, high = config.box

    def cost(images, params):
        # Fredrikson et al. minimise 1 - p_k; -log p_k has the same minimiser and a
        # gradient that does not vanish where the model gives class k almost no mass.
        labels = jnp.arange(images.shape[0])
        class_cost = model.per_example_loss(params, {"x": images, "y": labels})
        return jnp.sum(class_cost + config.tv_weight * jax.vmap(total_variation)(images))

    @jax.jit
    def step(images, optimizer_state, params):
        value, gradient = jax.value_and_grad(cost)(images, params)
        updates, optimizer_state = optimizer.update(gradient, optimizer_state, images)
        return jnp.clip(optax.apply_updates(images, updates), low, high), optimizer_state, value

    return optimizer, step


def class_prototypes(model: Model, params: Params, config: ProbingConfig,
                     public_mean: np.ndarray | None = None) -> np.ndarray:
    """One prototype per class by model inversion of the released model (MI-Face).

    Args:
      model: the model the federation trains.
      params: the global params the server sent (the attacker's copy).
      config: the inversion's setting.
      public_mean: ``input_shape`` mean public image, needed by ``start="public_mean"``.

    Returns:
      ``[num_classes, *input_shape]`` float32 prototypes in ``config.box``.

    Raises:
      ValueError: a ``"public_mean"`` start without a public mean of the input shape.

    References:
      Fredrikson, Jha, Ristenpart, ACM CCS 2015 (doi:10.1145/2810103.2813677), Alg. 1.
    """
    shape = tuple(model.input_shape)
    if config.start == "public_mean":
        if public_mean is None or tuple(np.shape(public_mean)) != shape:
            raise ValueError(f"attack.config.prototype.start 'public_mean' needs the public mean image of shape "
                             f"{shape}, got {None if public_mean is None else np.shape(public_mean)}")
        start = np.clip(np.asarray(public_mean, np.float32), *config.box)
    else:
        start = np.full(shape, 0.5 * (config.box[0] + config.box[1]), np.float32)
    images = jnp.broadcast_to(jnp.asarray(start), (model.num_classes, *shape))
    optimizer, step = _inversion_step(model, config)
    state = optimizer.init(images)
    # A host loop over one jitted step: conv gradients run several times slower inside
    # lax.scan on XLA's CPU backend (jax-ml/jax #12868, DESIGN §5).
    for _ in range(config.iterations):
        images, state, _ = step(images, state, params)
    return np.asarray(images, np.float32)


def class_confidence(model: Model, params: Params, prototypes: np.ndarray) -> np.ndarray:
    """``[num_classes]``: the probability the model gives each prototype's own class."""
    probabilities = jax.nn.softmax(model.apply(params, jnp.asarray(prototypes)), axis=-1)
    return np.asarray(probabilities[np.arange(len(prototypes)), np.arange(len(prototypes))])


def prototype_start(prototypes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[*labels.shape, *input_shape]``: each slot's start, the prototype of its label."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(prototypes)):
        raise ValueError(f"labels must lie in [0, {len(prototypes)}) to pick a prototype, got "
                         f"[{labels.min()}, {labels.max()}]")
    return np.asarray(prototypes)[labels]
