"""Exact input recovery from a fully connected layer with bias.

For ``y = x W + b`` and one example, ``dL/dW = x^T (dL/dy)`` and ``dL/db = dL/dy``, so
``x = (dL/dW)[:, j] / (dL/db)[j]`` for any unit ``j`` with a non-zero bias gradient
(Phong et al. 2017; Geiping et al. 2020, arXiv 2003.14053). The ratio cancels the
learning rate, so it works on a FedSGD update as well as on a gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.typing import Model, Observation, Reconstruction


def recover_dense_layer_input(kernel_update: jnp.ndarray, bias_update: jnp.ndarray) -> jnp.ndarray:
    """The input of a dense layer from its kernel ``[in, out]`` and bias ``[out]`` updates.

    Uses the unit with the largest absolute bias update, the best-conditioned ratio.
    """
    unit = jnp.argmax(jnp.abs(bias_update))
    return kernel_update[:, unit] / bias_update[unit]


def invert_dense_layer(observation: Observation, layer: str, victims: Sequence[int]) -> Reconstruction:
    """Recovers each victim's single input from the dense layer ``layer`` (the first layer).

    Args:
      observation: the server's view; the protocol must be one example in one step.
      layer: name of the top-level dense layer whose input is the model input.
      victims: positions on the observed client axis.
    """
    metadata = observation.metadata
    if metadata.local_steps * metadata.batch_size != 1:
        raise ValueError("the analytic dense-layer attack is exact for one example in one step; got "
                         f"local_steps={metadata.local_steps}, batch_size={metadata.batch_size}")
    if layer not in observation.updates or "bias" not in observation.updates[layer]:
        raise ValueError(f"layer {layer!r} is not a dense layer with bias in the observed update; "
                         f"layers: {sorted(observation.updates)}")
    kernel, bias = observation.updates[layer]["kernel"], observation.updates[layer]["bias"]
    inputs = np.stack([np.asarray(recover_dense_layer_input(kernel[v], bias[v])) for v in victims])
    victims = tuple(int(v) for v in victims)
    return Reconstruction(inputs=inputs.reshape(len(victims), 1, 1, *metadata.input_shape),
                          labels=np.full((len(victims), 1, 1), -1, np.int32),
                          objective=np.zeros(len(victims), np.float32),
                          trace=np.zeros((len(victims), 1, 0), np.float32), victims=victims)


# --- Batches -------------------------------------------------------------------------
#
# For a batch, ``dL/dW[:, i] = sum_b d_bi x_b`` and ``dL/db_i = sum_b d_bi`` with
# ``d_bi = dL/dy_bi``. Behind a ReLU, ``d_bi = 0`` for every example that leaves unit ``i``
# inactive, so a unit activated by exactly one example ``a`` gives ``x_a`` back exactly; a
# unit activated by several gives an affine mixture of them. An example that is alone
# on several units appears as the same candidate several times, while mixtures differ
# from unit to unit (their weights ``d_bi`` do), so agreement between units marks the
# candidates that are real examples (Fowl et al. 2022 build a malicious layer to force
# this; an honest wide layer provides it by chance).


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseLayerCandidates:
    """Distinct inputs read off one victim's dense-layer update.

    Attributes:
      inputs: ``[N, *input_shape]`` distinct candidates, most supported first.
      support: ``[N]`` how many units gave each candidate (within the tolerance).
      isolated: ``[N]`` True where ``support >= min_support``: the candidate is, with high
        probability, one example exactly; the others may be mixtures of several.
      units: ``[N]`` one unit that gave each candidate.
    """

    inputs: np.ndarray
    support: np.ndarray
    isolated: np.ndarray
    units: np.ndarray


def dense_layer_candidates(kernel_update, bias_update, *, input_shape: tuple[int, ...],
                           relative_tolerance: float = 1e-4, min_bias: float = 0.0,
                           min_support: int = 2) -> DenseLayerCandidates:
    """Groups the per-unit ratios ``dW[:, i] / db_i`` of one dense layer into distinct inputs.

    Args:
      kernel_update: ``[in, out]`` kernel update (or gradient) of the layer.
      bias_update: ``[out]`` bias update of the layer.
      input_shape: shape of one input (``in`` elements).
      relative_tolerance: two candidates are the same input when their distance is below
        this fraction of the larger norm.
      min_bias: units with ``|db_i|`` at most this (after rescaling by the largest) are
        skipped; ``0`` skips only exact zeros, i.e. units no example activated.
      min_support: agreeing units needed to flag a candidate as isolated.

    Returns:
      The distinct candidates with their support and isolation flags.

    Raises:
      ValueError: for shapes that do not fit or bad tolerances.

    References:
      Phong et al. "Privacy-Preserving Deep Learning via Additively Homomorphic
      Encryption", IEEE TIFS 2018 (ePrint 2017/715).
      Fowl, Geiping, Czaja, Goldblum, Goldstein. "Robbing the Fed: Directly Obtaining
      Private Data in Federated Learning with Modified Models", ICLR 2022,
      arXiv:2110.13057.
    """
    kernel = np.asarray(kernel_update, np.float64)
    bias = np.asarray(bias_update, np.float64)
    if kernel.ndim != 2 or bias.shape != (kernel.shape[1],) or kernel.shape[0] != int(np.prod(input_shape)):
        raise ValueError(f"kernel [in, out] and bias [out] with in = prod(input_shape) = {int(np.prod(input_shape))} "
                         f"are needed, got kernel {kernel.shape} and bias {bias.shape}")
    if not 0 < relative_tolerance < 1:
        raise ValueError(f"relative_tolerance must be in (0, 1), got {relative_tolerance!r}")
    if not 0 <= min_bias < 1:
        raise ValueError(f"min_bias must be in [0, 1), got {min_bias!r}")
    if isinstance(min_support, bool) or not (isinstance(min_support, int) and min_support >= 1):
        raise ValueError(f"min_support must be an integer >= 1, got {min_support!r}")
    largest = np.max(np.abs(bias)) if bias.size else 0.0
    units = np.flatnonzero(np.abs(bias) > min_bias * largest) if largest > 0 else np.zeros(0, np.int64)
    ratios = (kernel[:, units] / bias[units]).T  # [U, in]
    norms = np.linalg.norm(ratios, axis=1)
    # Pairwise closeness relative to the larger norm; greedy grouping around the unit with
    # the most neighbours, so a group's representative is a well-supported one.
    distances = np.sqrt(np.maximum(np.sum(ratios ** 2, 1)[:, None] + np.sum(ratios ** 2, 1)[None]
                                   - 2 * ratios @ ratios.T, 0.0))
    close = distances <= relative_tolerance * np.maximum(norms[:, None], norms[None])
    # Units close to no other are their own group; only the rest need the greedy pass.
    unassigned = np.sum(close, axis=1) > 1
    chosen, support, merged = [], [], []
    while unassigned.any():
        counts = np.where(unassigned, np.sum(close & unassigned[None], axis=1), -1)
        centre = int(np.argmax(counts))
        members = np.flatnonzero(close[centre] & unassigned)
        chosen.append(centre)
        support.append(members.size)
        # Least-squares fit x = argmin sum_i ||dW_i - db_i x||^2 over the agreeing units:
        # every unit's float32 rounding averages out, the large-|db_i| ones weigh most.
        member_bias = bias[units[members]]
        merged.append(kernel[:, units[members]] @ member_bias / np.sum(member_bias ** 2))
        unassigned[members] = False
    for single in np.flatnonzero(np.sum(close, axis=1) == 1):
        chosen.append(int(single))
        support.append(1)
        merged.append(ratios[single])
    order = np.argsort(-np.asarray(support, np.int64), kind="stable")
    support = np.asarray(support, np.int64)[order]
    inputs = np.stack(merged)[order] if merged else np.zeros((0, kernel.shape[0]))
    return DenseLayerCandidates(inputs=inputs.reshape(-1, *input_shape).astype(np.float32),
                                support=support, isolated=support >= min_support,
                                units=units[np.asarray(chosen, np.int64)[order]] if merged else units[:0])


def invert_dense_layer_batch(observation: Observation, layer: str, victims: Sequence[int], **options
                             ) -> list[DenseLayerCandidates]:
    """Recovers the inputs of each victim's batch that a wide ReLU dense layer isolates.

    Args:
      observation: the server's view; one local step (the ratio cancels the learning
        rate and the batch mean, but not several steps).
      layer: name of the top-level dense layer whose input is the model input.
      victims: positions on the observed client axis.
      **options: passed to ``dense_layer_candidates``.

    Returns:
      One ``DenseLayerCandidates`` per victim; ``isolated`` marks exact examples.

    Raises:
      ValueError: for several local steps, a missing layer or bad victims.
    """
    metadata = observation.metadata
    if metadata.local_steps != 1:
        raise ValueError(f"batch dense-layer recovery reads one gradient; got local_steps={metadata.local_steps}")
    if layer not in observation.updates or "bias" not in observation.updates[layer]:
        raise ValueError(f"layer {layer!r} is not a dense layer with bias in the observed update; "
                         f"layers: {sorted(observation.updates)}")
    kernel, bias = observation.updates[layer]["kernel"], observation.updates[layer]["bias"]
    bad = [v for v in victims if not 0 <= int(v) < kernel.shape[0]]
    if bad:
        raise ValueError(f"victims {bad} are not positions among the {kernel.shape[0]} observed updates")
    return [dense_layer_candidates(kernel[int(v)], bias[int(v)], input_shape=tuple(metadata.input_shape), **options)
            for v in victims]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalyticConfig:
    """Analytic recovery from a fully-connected first layer with bias, as one attack.

    Attributes:
      layer: the top-level dense layer whose input is the model input (``"dense_0"`` for
        the MLP).
      min_support: agreeing units needed to report a candidate as an exact example.
      relative_tolerance: candidates closer than this fraction are one input.
    """

    layer: str = "dense_0"
    min_support: int = 2
    relative_tolerance: float = 1e-4

    kind: ClassVar[str] = "images"
    needs_public_images: ClassVar[bool] = False

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """Checks ``layer`` is a dense layer with bias of ``model``; inverts it exactly."""
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *model.input_shape)))
        if "bias" not in shapes.get(self.layer, {}):
            raise ValueError(f"attack.config.layer {self.layer!r} is not a dense layer with bias of model "
                             f"{model.name!r}; its layers: {sorted(shapes)}")
        def recover(observation, key, victims, side: SideKnowledge):
            return analytic_attack(observation, self, victims)
        return Attack(kind=self.kind, model=model, iterations=1, recover=recover)

    def __post_init__(self):
        if not (isinstance(self.min_support, int) and self.min_support >= 1):
            raise ValueError(f"min_support must be an integer >= 1, got {self.min_support!r}")
        if not 0 < self.relative_tolerance < 1:
            raise ValueError(f"relative_tolerance must be in (0, 1), got {self.relative_tolerance!r}")


def analytic_attack(observation: Observation, config: AnalyticConfig, victims: Sequence[int]) -> Reconstruction:
    """Each victim's isolated inputs (exact examples) as a ``Reconstruction``.

    ``inputs`` is ``[V, 1, N, *input_shape]`` with ``N`` the most candidates of any victim;
    victims with fewer are padded with NaN (no candidate). Labels are ``-1`` (not recovered).
    """
    found = invert_dense_layer_batch(observation, config.layer, victims, min_support=config.min_support,
                                     relative_tolerance=config.relative_tolerance)
    shape = tuple(observation.metadata.input_shape)
    kept = [candidates.inputs[candidates.isolated] for candidates in found]
    width = max(1, max(k.shape[0] for k in kept))
    inputs = np.full((len(kept), 1, width, *shape), np.nan, np.float32)
    for index, candidates in enumerate(kept):
        inputs[index, 0, :candidates.shape[0]] = candidates
    victims = tuple(int(v) for v in victims)
    return Reconstruction(inputs=inputs, labels=np.full((len(victims), 1, width), -1, np.int32),
                          objective=np.array([k.shape[0] for k in kept], np.float32),
                          trace=np.zeros((len(victims), 1, 0), np.float32), victims=victims)
