"""Shadow models for membership inference: many small models trained as one program.

A shadow model imitates the target's training on data the attacker chose, so the
attacker can see how a record's score behaves when the record was (IN) or was not (OUT)
in the training set (Shokri et al. 2017; Carlini et al. 2022). Everything here is what
the attacker can do with public knowledge: the model, the training recipe and its own
population data.

:func:`train_models` trains ``M`` models on one shared record array ``x [N, ...]``, each
with its own init key and its own inclusion mask ``[M, N]`` (which records it trains
on). With ``batching="vmap"`` the ``M`` models are ONE jitted program vmapped over the
model axis; ``"loop"`` calls the jitted single-model program :func:`train_model` once per
model, which gives the same numbers (a test checks it) and is the faster choice for
convolutional models on XLA's CPU backend (DESIGN §5). The same function trains the
target model (inclusion mask = the target's members), with or without DP-SGD.

References:
  Shokri, Stronati, Song, Shmatikov. "Membership Inference Attacks against Machine
  Learning Models", IEEE S&P 2017, arXiv:1610.05820.
  Carlini, Chien, Nasr, Song, Terzis, Tramèr. "Membership Inference Attacks From First
  Principles", IEEE S&P 2022, arXiv:2112.03570.
  Abadi et al. "Deep Learning with Differential Privacy", CCS 2016, arXiv:1607.00133.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.defenses import per_example_gradients
from fedpriv.typing import Array, Model, Params, PRNGKey

TRAINING_OPTIMIZERS = ("sgd", "adam")
TRAINING_BATCHES = ("full", "poisson")
MODEL_BATCHINGS = ("vmap", "loop")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShadowTrainingConfig:
    """How one shadow (or target) model is trained, from a fresh init.

    Attributes:
      steps: optimisation steps, ``>= 1``.
      learning_rate: step size, finite and ``> 0``.
      optimizer: ``"sgd"`` (plain gradient descent) or ``"adam"``.
      batch: ``"full"``: every step is the mean loss over all included records (full-batch
        gradient descent); ``"poisson"``: every step each included record is sampled
        independently with probability ``sampling_rate`` (the batching DP-SGD's
        accounting assumes), the step is the mean over the sampled records, and a step that
        samples nobody leaves the model unchanged (without DP).
      sampling_rate: the Poisson rate in ``(0, 1]`` for ``batch="poisson"``; must be
        ``None`` for ``batch="full"``.

    Raises:
      ValueError: on construction, naming the field, the value and what is allowed.
    """

    steps: int
    learning_rate: float
    optimizer: str = "adam"
    batch: str = "full"
    sampling_rate: float | None = None

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        if (isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, numbers.Real)
                or not (math.isfinite(self.learning_rate) and self.learning_rate > 0)):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        object.__setattr__(self, "learning_rate", float(self.learning_rate))
        if self.optimizer not in TRAINING_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(TRAINING_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.batch not in TRAINING_BATCHES:
            raise ValueError(f"batch must be one of {list(TRAINING_BATCHES)}, got {self.batch!r}")
        if self.batch == "full":
            if self.sampling_rate is not None:
                raise ValueError(f"sampling_rate must be None when batch='full', got {self.sampling_rate!r}")
        else:
            rate = self.sampling_rate
            if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
                    or not (0.0 < float(rate) <= 1.0)):
                raise ValueError(f"sampling_rate must be a number in (0, 1] when batch='poisson', got {rate!r}")
            object.__setattr__(self, "sampling_rate", float(rate))


def balanced_inclusion_masks(key: PRNGKey, num_models: int, num_records: int) -> np.ndarray:
    """Random inclusion masks where every record is IN exactly ``num_models // 2`` models.

    For each record, a uniformly random subset of ``num_models // 2`` models includes it,
    independently across records, so each model trains on about half of the records and
    every record has the same number of IN (and OUT) models: Carlini et al.'s
    ``keep = argsort(uniform) < M / 2`` construction.

    Args:
      key: the JAX key the masks are drawn from.
      num_models: ``M >= 2``.
      num_records: ``N >= 1``.

    Returns:
      ``[M, N]`` bool NumPy array.

    Raises:
      ValueError: if ``num_models < 2`` or ``num_records < 1``.

    References:
      Carlini et al. 2022, arXiv:2112.03570; reference code: tensorflow/privacy,
      ``research/mi_lira_2021/train.py``.
    """
    _check_count(num_models, "num_models", 2)
    _check_count(num_records, "num_records", 1)
    uniform = jax.random.uniform(key, (num_models, num_records))
    ranks = jnp.argsort(jnp.argsort(uniform, axis=0), axis=0)
    return np.asarray(ranks < num_models // 2)


def poisson_sample_masks(key: PRNGKey, steps: int, inclusion_mask: Array, sampling_rate: float) -> Array:
    """Which included records each step samples: ``[steps, N]`` float32 of 0 and 1.

    Each included record is sampled in each step independently with probability
    ``sampling_rate``; records outside ``inclusion_mask`` are never sampled. This is the
    exact draw :func:`train_model` makes from the first half of its key
    (``jax.random.split(key)[0]``), so a test can rebuild the batches.

    Args:
      key: the sampling key.
      steps: number of steps ``S``.
      inclusion_mask: ``[N]``, non-zero for the records the model trains on.
      sampling_rate: Poisson rate in ``(0, 1]``.
    """
    inclusion_mask = jnp.asarray(inclusion_mask)
    draws = jax.random.bernoulli(key, sampling_rate, (steps, *inclusion_mask.shape))
    return (draws & (inclusion_mask != 0)[None]).astype(jnp.float32)


def _optimizer(config: ShadowTrainingConfig) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        # The same local Adam as fedpriv.federated.make_client_update (eps_root included),
        # so a target trained here equals one trained by the client function.
        return optax.adam(config.learning_rate, eps_root=1e-16)
    return optax.sgd(config.learning_rate)


def _masked_mean_loss(model: Model, params: Params, batch: dict[str, Array], mask: Array) -> Array:
    losses = model.per_example_loss(params, batch)
    return jnp.sum(jnp.where(mask > 0, losses, 0.0)) / jnp.maximum(jnp.sum(mask > 0), 1)


def _train_one(model: Model, config: ShadowTrainingConfig, dp_plan: Any, init_key: PRNGKey, key: PRNGKey,
               x: Array, y: Array, inclusion_mask: Array) -> Params:
    """Trains one model; pure and traceable (vmapped over models by :func:`train_models`)."""
    batch = {"x": x, "y": y}
    included = (inclusion_mask != 0).astype(jnp.float32)
    params = model.init(init_key, x[:1])
    optimizer = _optimizer(config)
    sampling_key, noise_key = jax.random.split(key)
    if config.batch == "poisson":
        step_masks = poisson_sample_masks(sampling_key, config.steps, included, config.sampling_rate)
    else:
        step_masks = None
    noise_state = dp_plan.noise(noise_key).init(params) if dp_plan is not None else ()

    def step(carry, step_mask):
        params, optimizer_state, noise_state = carry
        mask = included if step_mask is None else step_mask
        if dp_plan is None:
            gradient = jax.grad(lambda p: _masked_mean_loss(model, p, batch, mask))(params)
        else:
            # Per-example gradients of ALL N records; the plan's clipped sum keeps only the
            # sampled ones (others contribute exactly zero), then noises the sum.
            per_example = per_example_gradients(model.per_example_loss, params, batch)
            gradient, noise_state, _ = dp_plan.private_gradient(per_example, mask, noise_state)
        updates, new_optimizer_state = optimizer.update(gradient, optimizer_state, params)
        new_params = optax.apply_updates(params, updates)
        # Without DP, a step that sampled nobody is skipped (as the federated client
        # function does); with DP it still releases noise, as the accountant assumes.
        active = jnp.logical_or(dp_plan is not None, jnp.any(mask > 0))
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(active, n, o), new, old)
        return (keep(new_params, params), keep(new_optimizer_state, optimizer_state), noise_state), None

    carry = (params, optimizer.init(params), noise_state)
    (params, _, _), _ = jax.lax.scan(step, carry, step_masks, length=config.steps)
    return params


@functools.partial(jax.jit, static_argnames=("model", "config", "dp_plan"))
def _train_one_jit(model, config, dp_plan, init_key, key, x, y, inclusion_mask):
    return _train_one(model, config, dp_plan, init_key, key, x, y, inclusion_mask)


@functools.partial(jax.jit, static_argnames=("model", "config", "dp_plan"))
def _train_many_jit(model, config, dp_plan, init_keys, keys, x, y, inclusion_masks):
    train = lambda init_key, key, mask: _train_one(model, config, dp_plan, init_key, key, x, y, mask)
    return jax.vmap(train)(init_keys, keys, inclusion_masks)


def train_model(model: Model, init_key: PRNGKey, x, y, inclusion_mask, config: ShadowTrainingConfig, *,
                key: PRNGKey | None = None, dp_plan: Any = None) -> Params:
    """Trains ONE model from ``model.init(init_key, ...)`` on the included records.

    The single-model program that :func:`train_models` vmaps; use it for the target model
    (``inclusion_mask`` = the target's members) or as the loop oracle.

    Args:
      model: the model.
      init_key: key of the initialisation.
      x: ``[N, *model.input_shape]`` records.
      y: ``[N]`` integer labels.
      inclusion_mask: ``[N]``, non-zero (or True) for the records the model trains on.
      config: the training recipe.
      key: the training key (split into a Poisson-sampling key and a DP noise key);
        required for ``batch="poisson"`` or a DP plan, unused otherwise.
      dp_plan: ``None`` or a :class:`fedpriv.defenses.DPSGDPlan`: every step is then a
        DP-SGD step (per-example clipping, Gaussian noise on the clipped sum, division by
        the plan's public ``expected_batch_size``). Requires ``config.batch="poisson"``,
        ``config.sampling_rate == dp_plan.sampling_rate`` and
        ``config.steps == dp_plan.steps``, so the run is the one the plan accounts for.

    Returns:
      The trained params.

    Raises:
      ValueError: for mismatched shapes, a missing ``key``, or a recipe that disagrees with
        the DP plan (naming the field).

    **Formal guarantees**

    - Bound: with a ``dp_plan`` the returned params are ``(dp_plan.report(delta).epsilon,
      delta)``-DP for every ``delta``, by the plan's accounting (this function makes
      exactly ``dp_plan.steps`` calls of ``private_gradient`` on Poisson-sampled batches
      of rate ``dp_plan.sampling_rate`` over the included records, with fresh noise
      states). Without a plan, nothing is protected.
    - Relation: add/remove-one record of the included set. Unit: one record.
    - Not protected: the number of included records (public through the plan's
      ``expected_batch_size``); ``x`` rows that are not included (they are never read
      into a gradient, but the caller holds them); reusing ``key`` across runs.
    """
    x, y, inclusion_mask = _check_records(model, x, y, inclusion_mask, models=None)
    _check_dp(config, dp_plan)
    init_key = _check_keys(init_key, None, "init_key")
    key = _training_key(config, dp_plan, key, None, "key", fallback=init_key)
    return _train_one_jit(model, config, dp_plan, init_key, key, x, y, inclusion_mask)


def train_models(model: Model, init_keys: PRNGKey, x, y, inclusion_mask, config: ShadowTrainingConfig, *,
                 keys: PRNGKey | None = None, dp_plan: Any = None, batching: str = "vmap") -> Params:
    """Trains ``M`` models on one record array, each with its own init key and inclusion mask.

    Args:
      model: the model.
      init_keys: ``M`` keys (``jax.random.split(key, M)``), one initialisation per model.
      x: ``[N, *model.input_shape]`` records shared by all models.
      y: ``[N]`` integer labels.
      inclusion_mask: ``[M, N]``; row ``m`` marks the records model ``m`` trains on (e.g.
        :func:`balanced_inclusion_masks`).
      config: the training recipe (the same for every model).
      keys: ``M`` training keys; required for ``batch="poisson"`` or a DP plan.
      dp_plan: ``None`` or a DP-SGD plan, as in :func:`train_model` (every model is then
        trained with DP-SGD, e.g. shadows that imitate a DP target).
      batching: ``"vmap"`` (ONE jitted program vmapped over the model axis; fastest for
        MLPs and on accelerators) or ``"loop"`` (a host loop over the jitted
        :func:`train_model`; for convolutional models on CPU, DESIGN §5). Same numbers.

    Returns:
      The params with a leading model axis ``M`` on every leaf.

    Raises:
      ValueError: for mismatched shapes or key counts, zero models, a missing ``keys``, an
        unknown ``batching``, or a recipe that disagrees with the DP plan.

    **Formal guarantees**

    - As :func:`train_model`, for each model separately (with respect to its own included
      records). Models sharing a record compose: releasing ``k`` DP models that all
      include a record costs ``k`` times the plan's privacy for that record.
    """
    if batching not in MODEL_BATCHINGS:
        raise ValueError(f"batching must be one of {list(MODEL_BATCHINGS)}, got {batching!r}")
    inclusion = np.asarray(inclusion_mask)
    if inclusion.ndim != 2 or inclusion.shape[0] < 1:
        raise ValueError(f"inclusion_mask must have shape [num_models >= 1, num_records], got {inclusion.shape}")
    num_models = inclusion.shape[0]
    x, y, inclusion = _check_records(model, x, y, inclusion, models=num_models)
    _check_dp(config, dp_plan)
    init_keys = _check_keys(init_keys, num_models, "init_keys")
    keys = _training_key(config, dp_plan, keys, num_models, "keys", fallback=init_keys)
    if batching == "vmap":
        return _train_many_jit(model, config, dp_plan, init_keys, keys, x, y, inclusion)
    trained = [_train_one_jit(model, config, dp_plan, init_keys[m], keys[m], x, y, inclusion[m])
               for m in range(num_models)]
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trained)


def logit_confidence(model: Model, params: Params, x, y) -> Array:
    """The logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of the true class.

    Computed stably from the logits ``z`` as ``z_y - logsumexp_{j != y} z_j`` (equal to
    ``log p_y - log(1 - p_y)`` without forming ``1 - p_y``, which rounds to 0 for a
    memorised record). Carlini et al. scale the confidence so that it is
    close to Gaussian over training runs.

    Args:
      model: the model.
      params: its params (no model axis).
      x: ``[N, *model.input_shape]`` records.
      y: ``[N]`` integer labels.

    Returns:
      ``[N]`` float32 confidences.

    References:
      Carlini et al. 2022, arXiv:2112.03570 (logit scaling of the confidence).
    """
    x, y, _ = _check_records(model, x, y, None, models=None)
    return _confidence_jit(model.apply, params, x, y)


def logit_confidences(model: Model, stacked_params: Params, x, y) -> Array:
    """:func:`logit_confidence` of every model of ``stacked_params`` (leading axis ``M``): ``[M, N]``."""
    x, y, _ = _check_records(model, x, y, None, models=None)
    return _confidences_jit(model.apply, stacked_params, x, y)


def _confidence(apply, params, x, y):
    logits = apply(params, x).astype(jnp.float32)
    true_logit = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return true_logit - jax.nn.logsumexp(others, axis=1)


_confidence_jit = jax.jit(_confidence, static_argnums=0)
_confidences_jit = jax.jit(lambda apply, params, x, y: jax.vmap(lambda p: _confidence(apply, p, x, y))(params),
                           static_argnums=0)


# ---------------------------------------------------------------------------------------
# Argument checks (host side, before any tracing).


def _check_count(value, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_records(model: Model, x, y, inclusion_mask, *, models: int | None, x_name: str = "x",
                   y_name: str = "y", allow_empty: bool = False):
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim < 1 or x.shape[1:] != tuple(model.input_shape):
        raise ValueError(f"{x_name} must have shape [N, *{tuple(model.input_shape)}] for model {model.name!r}, "
                         f"got {x.shape}")
    if x.shape[0] < 1 and not allow_empty:
        raise ValueError(f"{x_name} must hold at least one record, got 0")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{y_name} must have shape [N] = ({x.shape[0]},) to match {x_name}, got {y.shape}")
    if y.size == 0:
        y = y.astype(np.int32)
    if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= model.num_classes)):
        raise ValueError(f"{y_name} must hold integer labels in [0, {model.num_classes}), got dtype {y.dtype} "
                         f"and range [{y.min() if y.size else None}, {y.max() if y.size else None}]")
    if inclusion_mask is not None:
        inclusion_mask = np.asarray(inclusion_mask)
        expected = (x.shape[0],) if models is None else (models, x.shape[0])
        if inclusion_mask.shape != expected:
            raise ValueError(f"inclusion_mask must have shape {list(expected)} to match {x_name}, "
                             f"got {inclusion_mask.shape}")
        inclusion_mask = (inclusion_mask != 0).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y, jnp.int32), inclusion_mask


def _check_keys(keys, count: int | None, field: str):
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
    key_rank = 0 if typed else 1  # a raw uint32 key is [2]
    expected_rank = key_rank + (0 if count is None else 1)
    if keys.ndim != expected_rank or (count is not None and keys.shape[0] != count):
        what = "one key" if count is None else f"{count} keys (one per model, leading axis {count})"
        raise ValueError(f"{field} must be {what}, got an array of shape {keys.shape} and dtype {keys.dtype}")
    return keys


def _training_key(config, dp_plan, keys, count, field, *, fallback):
    if config.batch == "poisson" or dp_plan is not None:
        if keys is None:
            raise ValueError(f"{field} is required for batch='poisson' or a DP plan (Poisson sampling and "
                             f"noise draw from it), got None")
        return _check_keys(keys, count, field)
    return fallback  # unused by full-batch, non-private training


def _check_dp(config: ShadowTrainingConfig, dp_plan) -> None:
    if not isinstance(config, ShadowTrainingConfig):
        raise ValueError(f"config must be a ShadowTrainingConfig, got {type(config).__name__}")
    if dp_plan is None:
        return
    if not (hasattr(dp_plan, "private_gradient") and hasattr(dp_plan, "noise")):
        raise ValueError(f"dp_plan must be a DP-SGD plan with noise() and private_gradient(), got {dp_plan!r}")
    if config.batch != "poisson":
        raise ValueError(f"batch must be 'poisson' with a DP plan (its accounting assumes Poisson sampling), "
                         f"got {config.batch!r}")
    if config.sampling_rate != dp_plan.sampling_rate:
        raise ValueError(f"sampling_rate must equal the DP plan's sampling_rate {dp_plan.sampling_rate!r}, "
                         f"got {config.sampling_rate!r}")
    if config.steps != dp_plan.steps:
        raise ValueError(f"steps must equal the DP plan's steps {dp_plan.steps!r}, got {config.steps!r}")
