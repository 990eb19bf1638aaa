"""The imprint module of a malicious server ("Robbing the Fed", Fowl et al. 2022).

The server puts a block in front of the model, on the flattened input ``x``:

    h = v . x                       # one measurement, e.g. the mean pixel
    a_i = relu(h - q_i)             # k units, all with the SAME kernel column v
    x' = x + sum_i a_i u_i + c      # back to the input shape; every u_i equals one u

and the unchanged model runs on ``x'``. The biases ``-q_1 > ... > -q_k`` sit at quantiles
of the measurement's distribution (estimated from public data or a known distribution),
so the units switch on one after another as ``h`` grows. For one record ``j`` the loss
gradient reaching unit ``i`` is ``g_j = u . dL/dx'_j`` whatever ``i`` is (all ``u_i`` are
equal), so

    dL/dv_i = sum_{j: h_j > q_i} g_j x_j      dL/db_i = sum_{j: h_j > q_i} g_j

and consecutive differences isolate the records whose measurement falls in the bin
``[q_i, q_{i+1})`` (the last bin is ``[q_k, inf)``). A bin holding one record gives it back
exactly: ``x_j = (dL/dv_i - dL/dv_{i+1}) / (dL/db_i - dL/db_{i+1})``. The update is
linear in these sums and the learning rate cancels in the ratio, so the same works on a
FedSGD update, on a weighted mean of several clients' updates (secure aggregation does
not help: a bin that holds one record of the whole cohort still gives it back) and on
the sum of updates.

With ``k`` bins at equal-probability quantiles and ``N`` records drawn from the assumed
distribution, a record is alone in its bin with probability ``(k / (k + 1)) ** N``
(``k + 1`` cells counting the one below ``q_1``, which is never observed). So about
``exp(-N / k)`` of the batch comes back: 61 % at ``k = 2N``, 88 % at ``k = 8N``, 94 %
at ``k = 16N``.

Exact for FedSGD (one local step). With several local steps the imprint's own
parameters move between steps, so the bins shift and recovery is approximate.

References:
  Fowl, Geiping, Czaja, Goldblum, Goldstein. "Robbing the Fed: Directly Obtaining Private
  Data in Federated Learning with Modified Models", ICLR 2022, arXiv:2110.13057.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.typing import Array, Model, Observation, Params, PRNGKey, Reconstruction

IMPRINT_NAME = "imprint"
MEASUREMENTS = ("mean", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImprintConfig:
    """How the server builds the imprint block.

    Attributes:
      bins: number of imprint units ``k`` (bins); recovery grows like
        ``exp(-batch / bins)``.
      measurement: ``"mean"`` (mean of the flattened input) or ``"random"`` (a random unit
        direction drawn from the key given to :func:`make_imprint_model`).
      output_scale: size of the block's contribution to ``x'``; small, so the model
        downstream sees nearly its usual input (the attack is exact at any scale, the
        ratio cancels it).
      lowest_level: probability level of the lowest bin edge ``q_1``; records measured
        below it are lost, so it is small.
    """

    bins: int
    measurement: str = "mean"
    output_scale: float = 1e-3
    gain: float = 1e-4
    lowest_level: float = 1e-4

    kind: ClassVar[str] = "images"
    needs_public_images: ClassVar[bool] = True

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """Crafts the imprint model from public images; the attack reads the records off it."""
        crafted, _ = make_imprint_model(model, bins=self.bins, measurement=self.measurement,
                                        public_inputs=public.images, key=public.key,
                                        output_scale=self.output_scale, gain=self.gain,
                                        lowest_level=self.lowest_level)
        def recover(observation, key, victims, side: SideKnowledge):
            return recover_from_imprint(observation, victims=victims)
        return Attack(kind=self.kind, model=crafted, iterations=1, recover=recover, observes_aggregate=True)

    def __post_init__(self):
        if isinstance(self.bins, bool) or not isinstance(self.bins, numbers.Integral) or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")
        if self.measurement not in MEASUREMENTS:
            raise ValueError(f"measurement must be one of {list(MEASUREMENTS)}, got {self.measurement!r}")
        if not (isinstance(self.output_scale, numbers.Real) and math.isfinite(self.output_scale)
                and self.output_scale > 0):
            raise ValueError(f"output_scale must be a finite number > 0, got {self.output_scale!r}")
        if not (isinstance(self.gain, numbers.Real) and math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain must be a finite number > 0, got {self.gain!r}")
        if not (isinstance(self.lowest_level, numbers.Real) and 0 < self.lowest_level < 1 / self.bins):
            raise ValueError(f"lowest_level must be in (0, 1/bins) = (0, {1 / self.bins:g}), "
                             f"got {self.lowest_level!r}")


def bin_levels(config: ImprintConfig) -> np.ndarray:
    """Probability levels of the ``k`` bin edges: the lowest at ``lowest_level``, the rest
    splitting ``[lowest_level, 1]`` into ``k`` cells of equal probability."""
    return config.lowest_level + (1.0 - config.lowest_level) * np.arange(config.bins) / config.bins


def measurement_direction(config: ImprintConfig, input_size: int, key: PRNGKey | None = None) -> np.ndarray:
    """The measurement ``v`` as a ``[input_size]`` float32 vector (``h = v . x``)."""
    if config.measurement == "mean":
        return np.full(input_size, 1.0 / input_size, np.float32)
    if key is None:
        raise ValueError("measurement 'random' needs a key, got key=None")
    direction = np.asarray(jax.random.normal(key, (input_size,), jnp.float32), np.float64)
    return (direction / np.linalg.norm(direction)).astype(np.float32)


def imprint_block(imprint_params: Params, x: Array) -> Array:
    """Applies the imprint block to ``x [B, *input_shape]``; returns the same shape."""
    flat = x.reshape(x.shape[0], -1)
    active = jax.nn.relu(flat @ imprint_params["kernel"] + imprint_params["bias"])
    return (flat + active @ imprint_params["out_kernel"] + imprint_params["out_bias"]).reshape(x.shape)


def make_imprint_model(model: Model, *, bins: int, measurement: str = "mean",
                       public_inputs: np.ndarray | None = None,
                       measurement_mean: float | None = None, measurement_std: float | None = None,
                       key: PRNGKey | None = None, output_scale: float = 1e-3, gain: float = 1e-4,
                       lowest_level: float = 1e-4) -> tuple[Model, Params]:
    """Puts an imprint block in front of ``model``.

    The bin edges are quantiles of the measurement: empirical quantiles over
    ``public_inputs`` when given, else those of ``Normal(measurement_mean,
    measurement_std)`` (a distribution the server knows or assumes).

    Args:
      model: the honest model; its params keep their names, the block is added under
        ``"imprint"``.
      bins: number of imprint units (see :class:`ImprintConfig`).
      measurement: ``"mean"`` or ``"random"``.
      public_inputs: ``[N, *input_shape]`` public examples to estimate the quantiles.
      measurement_mean: mean of the measurement, when no public inputs are given.
      measurement_std: standard deviation of the measurement, likewise.
      key: draws the direction for ``measurement="random"``.
      output_scale: see :class:`ImprintConfig`.
      lowest_level: see :class:`ImprintConfig`.

    Returns:
      ``(imprint_model, imprint_params)``: a ``Model`` with the same interface whose
      ``init`` returns the honest params plus the crafted ``"imprint"`` subtree, and the
      crafted subtree alone, so a server attacking honest global params ``p`` sends
      ``{**p, "imprint": imprint_params}``.

    Raises:
      ValueError: for a bad config, a model that already has an ``"imprint"`` subtree, or
        a quantile source that is missing, doubled, of the wrong shape or degenerate.

    References:
      Fowl et al. 2022, "Robbing the Fed", arXiv:2110.13057 (Sec. 3).
    """
    config = ImprintConfig(bins=bins, measurement=measurement, output_scale=output_scale,
                           gain=gain, lowest_level=lowest_level)
    input_size = int(np.prod(model.input_shape))
    direction = measurement_direction(config, input_size, key)
    levels = bin_levels(config)
    if public_inputs is not None:
        if measurement_mean is not None or measurement_std is not None:
            raise ValueError("give either public_inputs or measurement_mean/measurement_std, not both")
        public_inputs = np.asarray(public_inputs, np.float64)
        if public_inputs.ndim < 1 or public_inputs.shape[1:] != tuple(model.input_shape) or len(public_inputs) < 2:
            raise ValueError(f"public_inputs must have shape [N >= 2, *{tuple(model.input_shape)}], "
                             f"got {public_inputs.shape}")
        measured = public_inputs.reshape(len(public_inputs), -1) @ direction.astype(np.float64)
        edges = np.quantile(measured, levels)
    else:
        if measurement_mean is None or measurement_std is None:
            raise ValueError("the bin edges need public_inputs or both measurement_mean and measurement_std, "
                             f"got measurement_mean={measurement_mean!r}, measurement_std={measurement_std!r}")
        if not (math.isfinite(measurement_std) and measurement_std > 0 and math.isfinite(measurement_mean)):
            raise ValueError(f"measurement_std must be finite and > 0 and measurement_mean finite, got "
                             f"measurement_mean={measurement_mean!r}, measurement_std={measurement_std!r}")
        edges = scipy.stats.norm.ppf(levels, loc=measurement_mean, scale=measurement_std)
    if not np.all(np.diff(edges) > 0):
        raise ValueError("the measurement's quantiles are not strictly increasing (public_inputs too few or "
                         f"too alike for {bins} bins)")
    # One shared output row u: the gradient reaching each unit is then the same g_j for
    # every unit, which is what makes the consecutive differences exact.
    scale = config.output_scale / (config.gain * config.bins)
    imprint_params = {
        "kernel": jnp.asarray(config.gain * np.repeat(direction[:, None], config.bins, axis=1), jnp.float32),
        "bias": jnp.asarray(-config.gain * edges, jnp.float32),
        "out_kernel": jnp.full((config.bins, input_size), scale, jnp.float32),
        "out_bias": jnp.zeros(input_size, jnp.float32),
    }

    def init(init_key, x):
        params = model.init(init_key, x)
        if IMPRINT_NAME in params:
            raise ValueError(f"model {model.name!r} already has a parameter subtree named {IMPRINT_NAME!r}")
        return {**params, IMPRINT_NAME: imprint_params}

    def honest(params):
        return {name: value for name, value in params.items() if name != IMPRINT_NAME}

    def apply(params, x):
        return model.apply(honest(params), imprint_block(params[IMPRINT_NAME], x))

    def per_example_loss(params, batch):
        moved = {**batch, "x": imprint_block(params[IMPRINT_NAME], batch["x"])}
        return model.per_example_loss(honest(params), moved)

    imprint_model = Model(init=init, apply=apply, per_example_loss=per_example_loss,
                          input_shape=model.input_shape, num_classes=model.num_classes,
                          head_names=model.head_names, name=f"imprint_{model.name}")
    return imprint_model, imprint_params


@jax.jit
def imprint_bins(kernel_update: Array, bias_update: Array) -> tuple[Array, Array]:
    """Per-bin sums from the imprint block's update.

    Args:
      kernel_update: ``[D, k]`` update (or gradient) of the imprint kernel.
      bias_update: ``[k]`` update of the imprint biases.

    Returns:
      ``(weighted_inputs [k, D], weights [k])``: for bin ``i``, ``sum_j g_j x_j`` and
      ``sum_j g_j`` over the records in it (up to a common factor); their ratio is the
      record when the bin holds one.
    """
    rows = kernel_update.T
    weighted_inputs = rows - jnp.concatenate([rows[1:], jnp.zeros_like(rows[:1])])
    weights = bias_update - jnp.concatenate([bias_update[1:], jnp.zeros_like(bias_update[:1])])
    return weighted_inputs, weights


def recover_from_imprint(observation: Observation, *, victims=None, aggregate: bool = False,
                         relative_tolerance: float = 1e-5) -> Reconstruction:
    """Reads records off the imprint block's update.

    Args:
      observation: the server's view of a round in which it sent an imprint model (the
        params have an ``"imprint"`` subtree).
      victims: positions on the observed client axis; ``None`` means all.
      aggregate: sum the victims' updates first and recover from the sum alone (what a
        server under secure aggregation sees); the result then has one victim row.
      relative_tolerance: a bin counts as empty when ``|sum_j g_j|`` is below this
        fraction of the largest bin's.

    Returns:
      A ``Reconstruction`` with ``inputs [V, 1, k, *input_shape]``: one candidate per bin,
      NaN for an empty bin. A bin with one record gives it exactly; a bin with several
      gives a weighted mean of them (not a record). ``labels`` are ``-1`` (the imprint does
      not reveal them); ``objective`` is the number of non-empty bins.

    Raises:
      ValueError: if the observation has no imprint update or the victims are invalid.

    References:
      Fowl et al. 2022, "Robbing the Fed", arXiv:2110.13057 (Sec. 3, Eq. 3).
    """
    updates = observation.updates
    if not isinstance(updates, dict) or IMPRINT_NAME not in updates:
        raise ValueError(f"the observation has no {IMPRINT_NAME!r} update; top-level names: "
                         f"{sorted(updates) if isinstance(updates, dict) else type(updates).__name__}")
    kernel, bias = updates[IMPRINT_NAME]["kernel"], updates[IMPRINT_NAME]["bias"]
    num_observed = kernel.shape[0]
    victims = tuple(range(num_observed)) if victims is None else tuple(int(v) for v in victims)
    bad = [v for v in victims if not 0 <= v < num_observed]
    if bad or not victims:
        raise ValueError(f"victims must be positions among the {num_observed} observed updates, got {victims}")
    if not 0 < relative_tolerance < 1:
        raise ValueError(f"relative_tolerance must be in (0, 1), got {relative_tolerance!r}")
    kernel, bias = kernel[jnp.asarray(victims)], bias[jnp.asarray(victims)]
    if aggregate:
        kernel, bias = jnp.sum(kernel, axis=0, keepdims=True), jnp.sum(bias, axis=0, keepdims=True)
    weighted_inputs, weights = jax.vmap(imprint_bins)(kernel, bias)
    weighted_inputs, weights = np.asarray(weighted_inputs, np.float64), np.asarray(weights, np.float64)
    largest = np.max(np.abs(weights), axis=1, keepdims=True)
    nonempty = np.abs(weights) > relative_tolerance * np.maximum(largest, np.finfo(np.float64).tiny)
    safe = np.where(nonempty, weights, 1.0)
    candidates = np.where(nonempty[..., None], weighted_inputs / safe[..., None], np.nan)
    rows, bins = candidates.shape[:2]
    return Reconstruction(inputs=candidates.reshape(rows, 1, bins, *observation.metadata.input_shape),
                          labels=np.full((rows, 1, bins), -1, np.int32),
                          objective=nonempty.sum(axis=1).astype(np.float32),
                          trace=np.zeros((rows, 1, 0), np.float32),
                          victims=(victims[0],) if aggregate else victims)
