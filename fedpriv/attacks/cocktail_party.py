"""The Cocktail Party Attack: records unmixed from an aggregated dense-layer gradient by ICA.

For a dense layer ``z = x W + b`` that reads the flattened input, the gradient summed
over records ``j`` is ``dL/dW = sum_j x_j g_j^T`` and ``dL/db = sum_j g_j`` with
``g_j = dL/dz_j``. Each unit's kernel column is a linear MIXTURE of the inputs ``x_j``,
weighted by ``g_jh``; a FedSGD update, a weighted mean of several hospitals' updates and
the sum that secure aggregation reveals are all the same kind of mixture. Images are
non-Gaussian and, across patients, close to independent, so independent component
analysis unmixes them: centre the ``H`` unit columns over the pixels (the samples),
whiten them onto their ``N`` leading principal directions (``N`` = the records mixed),
and run symmetric FastICA with the log-cosh negentropy contrast.

Records of one population share a common part (CT slices share one anatomy) and vary
most where the anatomy varies, which makes them dependent. Where the layer has a bias,
both are taken out exactly first, with the public images' per-pixel mean ``m`` and
spread ``s``: ``(dW - m (dL/db)^T) / s = sum_j ((x_j - m) / s) g_j^T`` (per pixel) mixes
the standardised deviations, close to independent. Measured on 4 CT phantoms with a
random ReLU mixing: mean |correlation| 0.50 on the raw records, 0.77-0.86 after taking
out ``m``, 0.99 after also dividing by ``s`` (0.94 at 16 records, 0.88 at 32).

ICA leaves each record's sign and scale free. Where the layer has a bias, its update
resolves both exactly: the unmixing rows found on the centred kernel columns, applied
to the uncentred columns and to the bias update, give ``c_j x_j`` and ``c_j`` (the bias
sees every record with input ``1``), and their ratio is ``x_j`` (the same ratio as the
one-record analytic attack of Phong et al. 2018). Without a bias, public data stand in
(ICA's ambiguity as Kariyappa et al. discuss it, resolved here with public images): the
sign whose record correlates positively with the public mean image, then the public
images' pixel mean and standard deviation. Either way the images are clipped to the
public images' pixel range.

Exact mixtures need FedSGD (one local step); with several steps the weights move between
steps and the mixture is approximate. The whitening keeps ``N <= min(H, pixels)``
directions, so a layer narrower than the records mixed caps what comes back.

References:
  Kariyappa, Guo, Yang, Chandrasekaran, Suh, Qureshi. "Cocktail Party Attack: Breaking
  Aggregation-Based Privacy in Federated Learning using Independent Component Analysis",
  ICML 2023, arXiv:2209.05578.
  Hyvärinen. "Fast and Robust Fixed-Point Algorithms for Independent Component
  Analysis", IEEE Trans. Neural Networks 10(3), 1999 (FastICA, symmetric version).
  Hyvärinen, Oja. "Independent Component Analysis: Algorithms and Applications",
  Neural Networks 13, 2000 (whitening, log-cosh contrast).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.typing import Model, Observation, Reconstruction


@dataclasses.dataclass(frozen=True, kw_only=True)
class CocktailPartyConfig:
    """The Cocktail Party Attack on the first dense layer (Kariyappa et al., arXiv:2209.05578).

    Attributes:
      layer: top-level name of the dense layer that reads the flattened input; ``None``
        picks the first one in the model's parameter order (``dense_0`` of the MLP).
      components: records to unmix; ``None`` estimates them as the numerical rank of the
        centred kernel update (singular values above ``rank_tolerance`` times the largest),
        capped by ``local_steps * batch_size`` for one hospital's update (an aggregate's
        participant count is not in the protocol metadata).
      rank_tolerance: relative singular-value threshold of that rank, above the float32
        and secure-aggregation fixed-point rounding of the update.
      iterations: FastICA fixed-point iterations at most.
      tolerance: FastICA stops when every unmixing row moved less than this
        (``max |1 - |<w_new, w_old>|| < tolerance``).
    """

    layer: str | None = None
    components: int | None = None
    rank_tolerance: float = 1e-4
    iterations: int = 500
    tolerance: float = 1e-6

    kind: ClassVar[str] = "images"
    # Their per-pixel mean and spread make the records near independent; without a bias
    # they also give the sign and scale.
    needs_public_images: ClassVar[bool] = True

    def __post_init__(self):
        if self.layer is not None and not (isinstance(self.layer, str) and self.layer):
            raise ValueError(f"attack.config.layer must be a parameter name or null, got {self.layer!r}")
        if self.components is not None and (isinstance(self.components, bool)
                                            or not isinstance(self.components, numbers.Integral)
                                            or self.components < 1):
            raise ValueError(f"attack.config.components must be an integer >= 1 or null, got {self.components!r}")
        if not (isinstance(self.rank_tolerance, numbers.Real) and 0 < self.rank_tolerance < 1):
            raise ValueError(f"attack.config.rank_tolerance must be in (0, 1), got {self.rank_tolerance!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, numbers.Integral) \
                or self.iterations < 1:
            raise ValueError(f"attack.config.iterations must be an integer >= 1, got {self.iterations!r}")
        if not (isinstance(self.tolerance, numbers.Real) and math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ValueError(f"attack.config.tolerance must be a finite number > 0, got {self.tolerance!r}")

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        """Finds the input dense layer (a ``ValueError`` before any compute); the model is unchanged."""
        layer = input_dense_layer(model, self.layer)
        images = None if public.images is None else np.asarray(public.images, np.float64)

        def recover(observation, key, victims, side: SideKnowledge):
            return recover_by_ica(observation, key, layer=layer, victims=victims, config=self, public_images=images)
        return Attack(kind=self.kind, model=model, iterations=self.iterations, recover=recover,
                      observes_aggregate=True)


def input_dense_layer(model: Model, layer: str | None = None) -> str:
    """The name of the top-level dense layer whose kernel reads the flattened input.

    Raises:
      ValueError: naming ``attack`` and the model when it has no such layer (e.g. a
        ConvNet, whose first layer is a convolution), or ``layer`` is not one.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *model.input_shape)))
    inputs = int(np.prod(model.input_shape))
    readers = [name for name, subtree in shapes.items()
               if isinstance(subtree, dict) and "kernel" in subtree and subtree["kernel"].shape[:1] == (inputs,)
               and len(subtree["kernel"].shape) == 2]
    if not readers or (layer is not None and layer not in readers):
        wanted = "any" if layer is None else f"{layer!r} as"
        raise ValueError(f"attack cocktail_party needs a dense layer reading the flattened input ({inputs} "
                         f"values); model {model.name!r} has no {wanted} such layer (top-level layers: "
                         f"{sorted(shapes)}); use model=mlp or set attack.config.layer")
    return readers[0] if layer is None else layer


def _principal_directions(mixtures: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``mixtures [H, P]`` over the samples; returns it with the singular values
    (descending) and left singular vectors, from the ``H x H`` Gram matrix (an SVD of the
    ``H x P`` matrix is slower on a loaded CPU and gives the same directions). In float64:
    the Gram matrix squares the condition number, float32 would hide ranks below 3e-4."""
    mixtures = np.asarray(mixtures, np.float64)
    centred = mixtures - mixtures.mean(axis=1, keepdims=True)
    values, vectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(values)[::-1]
    return centred, np.sqrt(np.maximum(values[order], 0.0)), vectors[:, order]


def whiten(mixtures: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``mixtures [H, P]`` over the samples ``P`` and projects them onto their
    ``components`` leading principal directions with unit variance.

    Returns:
      ``(whitened [N, P], whitening [N, H])`` with ``whitened = whitening @ centred``.
    """
    centred, singular, left = _principal_directions(mixtures)
    scale = math.sqrt(mixtures.shape[1]) / np.maximum(singular[:components], np.finfo(np.float64).tiny)
    whitening = scale[:, None] * left[:, :components].T
    return whitening @ centred, whitening


def mixed_records(mixtures: np.ndarray, rank_tolerance: float) -> int:
    """Records a mixture holds: the numerical rank of the centred ``mixtures [H, P]``."""
    _, singular, _ = _principal_directions(mixtures)
    return int(np.sum(singular > rank_tolerance * max(singular[0], np.finfo(np.float64).tiny)))


def _symmetric_decorrelation(unmixing: jax.Array) -> jax.Array:
    """``(W W^T)^{-1/2} W``: the rows become orthonormal, none is favoured (Hyvärinen 1999)."""
    values, vectors = jnp.linalg.eigh(unmixing @ unmixing.T)
    return (vectors * jax.lax.rsqrt(jnp.maximum(values, 1e-30))) @ vectors.T @ unmixing


@jax.jit
def fast_ica(whitened: jax.Array, initial: jax.Array, iterations: jax.Array,
             tolerance: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Symmetric FastICA with the log-cosh contrast on ``whitened [N, P]`` (unit covariance).

    The fixed point ``w <- E[z tanh(w.z)] - E[1 - tanh^2(w.z)] w`` for all rows at once,
    followed by symmetric decorrelation (Hyvärinen 1999, Eq. 20 with ``g = tanh``).

    Returns:
      ``(unmixing [N, N], iterations run, last change)``; ``unmixing @ whitened`` are the
      estimated sources with unit variance.
    """
    samples = whitened.shape[1]

    def step(state):
        unmixing, _, count = state
        activated = jnp.tanh(unmixing @ whitened)
        updated = (activated @ whitened.T / samples
                   - jnp.mean(1.0 - activated ** 2, axis=1)[:, None] * unmixing)
        updated = _symmetric_decorrelation(updated)
        change = jnp.max(jnp.abs(jnp.abs(jnp.sum(updated * unmixing, axis=1)) - 1.0))
        return updated, change, count + 1

    proceed = lambda state: (state[2] < iterations) & (state[1] > tolerance)
    unmixing, change, count = jax.lax.while_loop(
        proceed, step, (_symmetric_decorrelation(initial), jnp.asarray(jnp.inf, whitened.dtype), jnp.asarray(0)))
    return unmixing, count, change


def unmix(kernel_update: np.ndarray, bias_update: np.ndarray | None, key: jax.Array, *, components: int,
          config: CocktailPartyConfig, public_images: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Recovers ``components`` inputs ``[N, in]`` from one dense layer's kernel update ``[in, H]``.

    With a bias and public images, the records are unmixed in the public population's
    standardised pixels ``(x - m) / s`` (see the module docstring); both steps are exact
    on the mixture. The sign and scale come from the bias update, else from the public
    images. Returns the inputs and FastICA's last change.
    """
    mixtures = np.asarray(kernel_update, np.float64).T
    bias = None if bias_update is None else np.asarray(bias_update, np.float64)
    mean_input, pixel_scale = _population(public_images if bias is not None else None, mixtures.shape[1])
    if bias is not None:
        mixtures = (mixtures - bias[:, None] * mean_input[None, :]) / pixel_scale[None, :]
    whitened, whitening = whiten(mixtures, components)
    initial = jax.random.normal(key, (components, components), jnp.float32)
    unmixing, _, change = fast_ica(jnp.asarray(whitened, jnp.float32), initial, jnp.asarray(config.iterations),
                                   jnp.asarray(config.tolerance, jnp.float32))
    unmixing = np.asarray(unmixing, np.float64)
    if bias is None:
        return _public_sign_and_scale(unmixing @ whitened, public_images), float(change)
    demixing = unmixing @ whitening  # [N, H]; it unmixes the uncentred columns and the bias alike
    weights = demixing @ bias
    safe = np.where(np.abs(weights) > 0, weights, np.nan)
    recovered = (demixing @ mixtures) / safe[:, None] * pixel_scale + mean_input
    if public_images is not None:
        # A poorly separated component has a bias weight near zero and blows up; images
        # have a known pixel range, read off the public ones.
        recovered = np.clip(recovered, public_images.min(), public_images.max())
    return recovered, float(change)


def _population(public_images: np.ndarray | None, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and spread of the public images (``0`` and ``1`` without them); the
    spread is floored at 1e-3 of its largest value (pixels that never vary, e.g. air)."""
    if public_images is None:
        return np.zeros(pixels), np.ones(pixels)
    flat = public_images.reshape(len(public_images), -1)
    spread = flat.std(axis=0)
    return flat.mean(axis=0), np.maximum(spread, 1e-3 * max(spread.max(), np.finfo(np.float64).tiny))


def _public_sign_and_scale(sources: np.ndarray, public_images: np.ndarray | None) -> np.ndarray:
    """Unit-variance sources ``[N, P]`` mapped to images: the sign that correlates with the
    public mean image, then the public images' pixel mean and standard deviation."""
    if public_images is None:
        raise ValueError("attack cocktail_party: a dense layer without bias needs public images for the sign and "
                         "scale of each record, got none")
    flat = public_images.reshape(len(public_images), -1)
    reference = flat.mean(axis=0) - flat.mean()
    signs = np.where(sources @ reference >= 0, 1.0, -1.0)
    standardised = sources - sources.mean(axis=1, keepdims=True)
    standardised /= np.maximum(standardised.std(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return np.clip(flat.mean() + flat.std() * signs[:, None] * standardised, flat.min(), flat.max())


def recover_by_ica(observation: Observation, key: jax.Array, *, layer: str, victims, config: CocktailPartyConfig,
                   public_images: np.ndarray | None = None) -> Reconstruction:
    """Runs the attack on each victim's observed update (one row when only the aggregate is seen).

    Args:
      observation: per-hospital updates or their aggregate (secure aggregation).
      key: draws FastICA's initial unmixing, one fold per victim.
      layer: the input dense layer (see :func:`input_dense_layer`).
      victims: positions on the observed client axis.
      config: the attack's settings.
      public_images: ``[M, *input_shape]`` for a layer without bias.

    Returns:
      ``inputs [V, 1, N, *input_shape]`` (NaN-padded to the largest ``N`` among the
      victims), labels ``-1`` (not recovered), ``objective`` FastICA's last change.

    Raises:
      ValueError: before any compute, when the layer is not observed or a victim is not
        on the observed client axis.

    References:
      Kariyappa et al. 2023, arXiv:2209.05578 (Sec. 3-4).
    """
    metadata, updates = observation.metadata, observation.updates
    if layer not in updates or layer in metadata.private_layers or "kernel" not in updates[layer]:
        raise ValueError(f"attack cocktail_party reads layer {layer!r}, which the observation does not hold "
                         f"(observed: {sorted(set(updates) - set(metadata.private_layers))})")
    kernels = updates[layer]["kernel"]
    if not victims or any(not 0 <= v < kernels.shape[0] for v in victims):
        raise ValueError(f"victims must be positions among the {kernels.shape[0]} observed updates, got {victims}")
    biases = updates[layer].get("bias")
    recovered, changes = [], []
    for position, victim in enumerate(victims):
        kernel = np.asarray(kernels[victim], np.float64)
        components = config.components or _default_components(kernel, observation, config)
        components = min(components, *kernel.shape)
        inputs, change = unmix(kernel, None if biases is None else biases[victim], jax.random.fold_in(key, position),
                               components=components, config=config, public_images=public_images)
        recovered.append(inputs)
        changes.append(change)
    width = max(len(inputs) for inputs in recovered)
    padded = np.stack([np.pad(inputs, ((0, width - len(inputs)), (0, 0)), constant_values=np.nan)
                       for inputs in recovered])
    return Reconstruction(inputs=padded.reshape(len(victims), 1, width, *metadata.input_shape).astype(np.float32),
                          labels=np.full((len(victims), 1, width), -1, np.int32),
                          objective=np.asarray(changes, np.float32),
                          trace=np.zeros((len(victims), 1, 0), np.float32), victims=tuple(victims))


def _default_components(kernel: np.ndarray, observation: Observation, config: CocktailPartyConfig) -> int:
    """The rank rule, capped by one hospital's records per round when the update is its own."""
    rank = max(1, mixed_records(kernel.T, config.rank_tolerance))
    if observation.aggregated:
        return rank
    return min(rank, observation.metadata.local_steps * observation.metadata.batch_size)
