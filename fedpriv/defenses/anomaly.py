"""Server-side screening of client updates: sketch features, z-scores, a VAE, a report.

Every update is first reduced to a fixed-size feature by a public random projection
(a count sketch: each coordinate is added, with a random sign, to one of ``P`` buckets;
inner products and norms are preserved in expectation, and it needs no ``D x P``
matrix). Three screens then run:

- non-finite updates (any NaN or Inf) are always rejected and counted;
- robust z-scores over the present clients, ``(value - median) / (1.4826 MAD)``: of the
  log norm (too large or too small) and of the cosine to the coordinate-wise median
  sketch (too low); the median rather than the mean so a few attackers cannot move the
  reference they are compared with;
- optionally a small variational autoencoder fitted to benign sketches: a sketch it
  reconstructs worse than the ``quantile`` of held-out benign errors is flagged.

Flagged clients are excluded (``report.accepted`` is the new client mask) and reported
with every reason that fired. The screens are heuristics: they give no formal guarantee
and an adaptive attacker who knows them can craft updates that pass (e.g. an imprint
update scaled to a benign norm still passes the norm screen; see the tests for the
measured rates).

References:
  Weinberger, Dasgupta, Langford, Smola, Attenberg. "Feature Hashing for Large Scale
  Multitask Learning", ICML 2009, arXiv:0902.2206 (the count sketch as a projection).
  Kingma, Welling. "Auto-Encoding Variational Bayes", ICLR 2014, arXiv:1312.6114.
  Li, Wang, Wang, Liang. "Learning to Detect Malicious Clients for Robust Federated
  Learning", 2020, arXiv:2002.00211 (VAE on low-dimensional surrogates of updates).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.typing import Array, Params, PRNGKey

MAD_TO_STD = 1.4826  # the MAD of a normal distribution is 0.6745 of its standard deviation


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _positive_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnomalyConfig:
    """The server's screen.

    Attributes:
      projection_dim: ``P``, buckets of the count sketch.
      norm_z_threshold: flag ``|z(log norm)|`` above this.
      cosine_z_threshold: flag ``z(cosine to the median sketch)`` below minus this.
      norm_scale_floor: least spread assumed for the log norm (the z-score divides by at
        least this), so a round of near-identical clients does not flag small differences.
      cosine_scale_floor: least spread assumed for the cosine, likewise; small rounds of
        non-IID hospitals can have a tiny MAD by chance.
      vae_warmup_rounds: ``0`` (z-scores only) or the rounds whose accepted updates train
        the VAE detector, which then screens every later round as well.
    """

    projection_dim: int = 256
    norm_z_threshold: float = 4.0
    cosine_z_threshold: float = 4.0
    norm_scale_floor: float = 0.1
    cosine_scale_floor: float = 0.1
    vae_warmup_rounds: int = 0

    def __post_init__(self):
        if not (isinstance(self.vae_warmup_rounds, int) and self.vae_warmup_rounds >= 0):
            raise ValueError(f"vae_warmup_rounds must be an integer >= 0, got {self.vae_warmup_rounds!r}")
        _positive_int(self.projection_dim, "projection_dim")
        _positive_real(self.norm_z_threshold, "norm_z_threshold")
        _positive_real(self.cosine_z_threshold, "cosine_z_threshold")
        _positive_real(self.norm_scale_floor, "norm_scale_floor")
        _positive_real(self.cosine_scale_floor, "cosine_scale_floor")


def sketch_updates(updates: Params, key: PRNGKey, projection_dim: int) -> Array:
    """Count sketch of every client's update.

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      key: public key fixing the buckets and signs (the same for every client and round).
      projection_dim: ``P``.

    Returns:
      ``[C, P]`` float32; ``E[<S a, S b>] = <a, b>`` over the key.
    """
    sketches = []
    for index, leaf in enumerate(jax.tree_util.tree_leaves(updates)):
        flat = leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)
        bucket_key, sign_key = jax.random.split(jax.random.fold_in(key, index))
        buckets = jax.random.randint(bucket_key, (flat.shape[1],), 0, projection_dim)
        signs = jax.random.rademacher(sign_key, (flat.shape[1],), jnp.float32)
        sketches.append(jax.vmap(lambda row: jax.ops.segment_sum(row * signs, buckets, projection_dim))(flat))
    return sum(sketches)


def robust_z_scores(values: Array, mask: Array, scale_floor: float = 1e-12) -> Array:
    """``(values - median) / max(1.4826 MAD, scale_floor)``, median and MAD over ``mask``.

    Entries outside the mask get a score too.
    """
    masked = jnp.where(mask, values, jnp.nan)
    median = jnp.nanmedian(masked)
    mad = jnp.nanmedian(jnp.abs(masked - median))
    return (values - median) / jnp.maximum(MAD_TO_STD * mad, scale_floor)


@functools.partial(jax.jit, static_argnames=("projection_dim", "norm_scale_floor", "cosine_scale_floor"))
def update_features(updates: Params, client_mask: Array, key: PRNGKey, projection_dim: int,
                    norm_scale_floor: float = 0.1, cosine_scale_floor: float = 0.1) -> dict[str, Array]:
    """The screen's features of every client (jitted).

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      client_mask: ``[C]``, non-zero for a present client.
      key: the public projection key.
      projection_dim: ``P``.
      norm_scale_floor: see ``AnomalyConfig``.
      cosine_scale_floor: see ``AnomalyConfig``.

    Returns:
      A dict of ``[C]`` arrays ``finite``, ``log_norm``, ``cosine``, ``norm_z``,
      ``cosine_z`` and the ``[C, P]`` ``sketch`` (zero for a non-finite update). The
      median and MAD are taken over present, finite clients.
    """
    finite = jnp.stack([jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
                        for leaf in jax.tree_util.tree_leaves(updates)]).all(axis=0)
    clean = jax.tree_util.tree_map(
        lambda leaf: jnp.where(finite.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf, 0.0), updates)
    sketch = sketch_updates(clean, key, projection_dim)
    reference = (jnp.asarray(client_mask) > 0) & finite
    norms = jnp.linalg.norm(sketch, axis=1)
    log_norm = jnp.log(jnp.maximum(norms, 1e-30))
    centre = jnp.nanmedian(jnp.where(reference[:, None], sketch, jnp.nan), axis=0)
    cosine = sketch @ centre / jnp.maximum(norms * jnp.linalg.norm(centre), 1e-30)
    return {"finite": finite, "log_norm": log_norm, "cosine": cosine, "sketch": sketch,
            "norm_z": robust_z_scores(log_norm, reference, norm_scale_floor),
            "cosine_z": robust_z_scores(cosine, reference, cosine_scale_floor)}


# -- the VAE ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class VaeConfig:
    """The benign-update VAE.

    Attributes:
      hidden_size: width of the encoder's and decoder's hidden layer.
      latent_size: latent dimension.
      steps: full-batch Adam steps.
      learning_rate: Adam step size.
      quantile: the threshold is this quantile of the held-out benign errors, so about
        ``1 - quantile`` of benign updates are flagged.
      validation_fraction: share of the benign sketches held out to set the threshold.
    """

    hidden_size: int = 64
    latent_size: int = 8
    steps: int = 600
    learning_rate: float = 3e-3
    quantile: float = 0.99
    validation_fraction: float = 0.25

    def __post_init__(self):
        for name in ("hidden_size", "latent_size", "steps"):
            _positive_int(getattr(self, name), name)
        _positive_real(self.learning_rate, "learning_rate")
        if not (isinstance(self.quantile, numbers.Real) and 0 < self.quantile < 1):
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")


class _Vae(nn.Module):
    hidden_size: int
    latent_size: int
    output_size: int

    def setup(self):
        self.encoder = nn.Dense(self.hidden_size)
        self.mean = nn.Dense(self.latent_size)
        self.log_variance = nn.Dense(self.latent_size)
        self.decoder_hidden = nn.Dense(self.hidden_size)
        self.decoder_out = nn.Dense(self.output_size)

    def encode(self, x):
        hidden = nn.gelu(self.encoder(x))
        return self.mean(hidden), self.log_variance(hidden)

    def decode(self, z):
        return self.decoder_out(nn.gelu(self.decoder_hidden(z)))

    def __call__(self, x, noise):
        mean, log_variance = self.encode(x)
        return self.decode(mean + jnp.exp(0.5 * log_variance) * noise), mean, log_variance


@dataclasses.dataclass(frozen=True)
class VaeDetector:
    """A fitted VAE: params, the standardisation of its inputs and the error threshold."""

    params: Params
    offset: np.ndarray
    scale: np.ndarray
    threshold: float
    config: VaeConfig

    @property
    def projection_dim(self) -> int:
        return int(self.offset.shape[0]) - 1  # the features are the sketch's direction and its log norm


def _vae_features(sketch: Array) -> Array:
    # The direction of the sketch plus its log norm: scale and direction on one footing.
    norms = jnp.linalg.norm(sketch, axis=1, keepdims=True)
    return jnp.concatenate([sketch / jnp.maximum(norms, 1e-30), jnp.log(jnp.maximum(norms, 1e-30))], axis=1)


def _module(config: VaeConfig, size: int) -> _Vae:
    return _Vae(hidden_size=config.hidden_size, latent_size=config.latent_size, output_size=size)


def _vae_loss(params, x, noise, config: VaeConfig):
    reconstruction, mean, log_variance = _module(config, x.shape[1]).apply({"params": params}, x, noise)
    error = jnp.sum(jnp.square(reconstruction - x), axis=1)
    divergence = -0.5 * jnp.sum(1 + log_variance - mean ** 2 - jnp.exp(log_variance), axis=1)
    return jnp.mean(error + divergence)


@functools.partial(jax.jit, static_argnames="config")
def _train_vae(params, x, key, config: VaeConfig):
    optimizer = optax.adam(config.learning_rate)

    def step(carry, step_key):
        params, optimizer_state = carry
        noise = jax.random.normal(step_key, (x.shape[0], config.latent_size))
        grads = jax.grad(_vae_loss)(params, x, noise, config)
        updates, optimizer_state = optimizer.update(grads, optimizer_state, params)
        return (optax.apply_updates(params, updates), optimizer_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, config.steps))
    return params


def fit_vae_detector(benign_sketches, key: PRNGKey, config: VaeConfig = VaeConfig()) -> VaeDetector:
    """Fits the VAE to benign sketches and sets its threshold on held-out ones.

    Args:
      benign_sketches: ``[N, P]`` sketches of updates the server trusts (e.g. earlier
        rounds screened by z-scores), ``N >= 8``.
      key: initialisation, split and reparameterisation noise.
      config: the VAE.

    Returns:
      A ``VaeDetector``.

    Raises:
      ValueError: for fewer than 8 sketches or non-finite values.

    References:
      Kingma and Welling 2014, arXiv:1312.6114; Li et al. 2020, arXiv:2002.00211.
    """
    sketches = np.asarray(benign_sketches, np.float32)
    if sketches.ndim != 2 or sketches.shape[0] < 8 or not np.all(np.isfinite(sketches)):
        raise ValueError(f"benign_sketches must be a finite [N >= 8, P] array, got shape {sketches.shape}")
    split_key, init_key, noise_key = jax.random.split(key, 3)
    order = np.asarray(jax.random.permutation(split_key, sketches.shape[0]))
    held = max(2, int(round(config.validation_fraction * len(order))))
    validation, train = order[:held], order[held:]
    features = np.asarray(_vae_features(jnp.asarray(sketches)))
    offset, scale = features[train].mean(axis=0), features[train].std(axis=0) + 1e-6
    standardised = jnp.asarray((features - offset) / scale)
    module = _module(config, standardised.shape[1])
    params = module.init(init_key, standardised[:1], jnp.zeros((1, config.latent_size)))["params"]
    params = _train_vae(params, standardised[train], noise_key, config)
    detector = VaeDetector(params=params, offset=offset, scale=scale, threshold=np.inf, config=config)
    errors = np.asarray(vae_errors(detector, sketches[validation]))
    return dataclasses.replace(detector, threshold=float(np.quantile(errors, config.quantile)))


def vae_errors(detector: VaeDetector, sketches) -> Array:
    """Reconstruction error (squared, standardised units) of each sketch ``[N, P]`` through
    the VAE's mean path."""
    sketches = jnp.asarray(sketches, jnp.float32)
    if sketches.ndim != 2 or sketches.shape[1] != detector.projection_dim:
        raise ValueError(f"sketches must be [N, {detector.projection_dim}] like the detector's, "
                         f"got shape {tuple(sketches.shape)}")
    return _vae_errors(detector.params, sketches, jnp.asarray(detector.offset), jnp.asarray(detector.scale),
                       detector.config)


@functools.partial(jax.jit, static_argnames="config")
def _vae_errors(params, sketches, offset, scale, config: VaeConfig):
    x = (_vae_features(sketches) - offset) / scale
    module = _module(config, x.shape[1])
    mean, _ = module.apply({"params": params}, x, method=_Vae.encode)
    reconstruction = module.apply({"params": params}, mean, method=_Vae.decode)
    return jnp.sum(jnp.square(reconstruction - x), axis=1)


# -- the report ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ScreeningReport:
    """What the screen decided about each client position of a round.

    Attributes:
      accepted: ``[C]`` bool, the client mask to aggregate with.
      nonfinite: ``[C]`` bool, updates rejected for NaN/Inf.
      norm_z: ``[C]`` robust z-score of the log norm.
      cosine_z: ``[C]`` robust z-score of the cosine to the median sketch.
      vae_error: ``[C]`` VAE reconstruction error, or ``None`` without a detector.
      reasons: ``{position: (reason, ...)}`` for every present client that was rejected.
    """

    accepted: np.ndarray
    nonfinite: np.ndarray
    norm_z: np.ndarray
    cosine_z: np.ndarray
    vae_error: np.ndarray | None
    reasons: dict[int, tuple[str, ...]]

    @property
    def num_nonfinite(self) -> int:
        return int(np.sum(self.nonfinite))

    @property
    def rejected(self) -> tuple[int, ...]:
        return tuple(sorted(self.reasons))


def screen_updates(updates: Params, client_mask, key: PRNGKey, config: AnomalyConfig = AnomalyConfig(),
                   detector: VaeDetector | None = None) -> ScreeningReport:
    """Screens one round of client updates; flagged clients are excluded and reported.

    Args:
      updates: pytree with leaves ``[C, *param_shape]``.
      client_mask: ``[C]``, non-zero for a present client (absent ones stay excluded and
        are not reported).
      key: the public projection key (the detector must have been fitted on sketches made
        with the same key and ``projection_dim``).
      config: thresholds.
      detector: optional VAE detector.

    Returns:
      A ``ScreeningReport``; ``report.accepted`` replaces the client mask in aggregation.

    Raises:
      ValueError: if the mask does not match the updates or the detector's size differs.

    **Formal guarantees**

    None. The screen is a heuristic against crafted updates and leaks nothing beyond what
    the server already holds; an adaptive attacker can pass it, and it gives no
    differential privacy to anyone.
    """
    client_mask = np.asarray(client_mask)
    leaves = jax.tree_util.tree_leaves(updates)
    if client_mask.ndim != 1 or any(leaf.shape[0] != client_mask.shape[0] for leaf in leaves):
        sizes = sorted({leaf.shape[0] for leaf in leaves})
        raise ValueError(f"client_mask must be [C] with C the leading axis of every update leaf, got "
                         f"client_mask shape {client_mask.shape} and leading sizes {sizes}")
    if detector is not None and detector.projection_dim != config.projection_dim:
        raise ValueError(f"detector was fitted on {detector.projection_dim}-bucket sketches, config has "
                         f"projection_dim={config.projection_dim}")
    features = jax.device_get(update_features(updates, jnp.asarray(client_mask), key, config.projection_dim,
                                              config.norm_scale_floor, config.cosine_scale_floor))
    present = client_mask > 0
    nonfinite = present & ~features["finite"]
    errors = None if detector is None else np.asarray(vae_errors(detector, features["sketch"]))
    reasons: dict[int, tuple[str, ...]] = {}
    for client in np.flatnonzero(present):
        why = []
        if nonfinite[client]:
            why.append("non-finite values")
        else:
            if abs(features["norm_z"][client]) > config.norm_z_threshold:
                why.append(f"norm z-score {features['norm_z'][client]:.1f} beyond ±{config.norm_z_threshold}")
            if features["cosine_z"][client] < -config.cosine_z_threshold:
                why.append(f"cosine z-score {features['cosine_z'][client]:.1f} below -{config.cosine_z_threshold}")
            if errors is not None and errors[client] > detector.threshold:
                why.append(f"VAE error {errors[client]:.3g} above {detector.threshold:.3g}")
        if why:
            reasons[int(client)] = tuple(why)
    accepted = present.copy()
    accepted[list(reasons)] = False
    return ScreeningReport(accepted=accepted, nonfinite=nonfinite, norm_z=np.asarray(features["norm_z"]),
                           cosine_z=np.asarray(features["cosine_z"]), vae_error=errors, reasons=reasons)
