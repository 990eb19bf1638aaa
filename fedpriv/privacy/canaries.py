"""Canaries and scores for empirical privacy audits (the experiments behind :mod:`auditing`).

White-box gradient canaries (the server or an observer sees every noisy update, as in
DP-SGD or DP-FedAvg without secure aggregation): a canary is a gradient of norm equal
to the clip norm, either along a fixed random direction or on one coordinate ("Dirac"
canary); the score of a released update is its inner product with the canary's unit
direction. :func:`run_gradient_canary_trials` runs the REAL mechanism's
``private_gradient`` (clip, sum, noise) jitted and vmapped over trials, so a plan that
adds the wrong amount of noise is caught; :class:`MisreportedMechanism` builds such a
plan on purpose (it claims one plan's privacy and runs another).

Black-box input canaries: :func:`craft_input_canaries` makes out-of-distribution
records for any :class:`fedpriv.typing.Model`; after training with and without them
(elsewhere), :func:`input_canary_scores` / :func:`loss_scores` turn their losses into
scores (lower loss means "member").

This module never imports :mod:`fedpriv.defenses` (that package imports
:mod:`fedpriv.privacy`): a mechanism is anything with the members of
:class:`PrivateGradientMechanism`, such as :class:`fedpriv.defenses.DPSGDPlan`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.privacy import _validation
from fedpriv.typing import Array, Batch, Model, Params, PRNGKey

CANARY_KINDS: tuple[str, ...] = ("random", "dirac")
INPUT_CANARY_KINDS: tuple[str, ...] = ("uniform_noise", "far_gaussian")


class PrivateGradientMechanism(Protocol):
    """What an audited mechanism must offer (e.g. :class:`fedpriv.defenses.DPSGDPlan`).

    ``private_gradient(per_example_grads, example_mask, noise_state)`` returns
    ``(release, new_noise_state, aux)``: clip every contribution to ``l2_clip_norm``,
    sum the unmasked ones, add noise, post-process. ``noise_state(key)`` builds a fresh
    noise state. A client-level plan is audited the same way, with per-client updates
    in place of per-example gradients.
    """

    l2_clip_norm: float

    def noise_state(self, key: PRNGKey) -> Any: ...

    def private_gradient(self, per_example_grads: Params, example_mask: Array, noise_state: Any) -> tuple: ...


def _check_mechanism(mechanism: object, name: str) -> None:
    missing = [member for member in ("private_gradient", "noise_state", "l2_clip_norm")
               if not hasattr(mechanism, member)]
    if missing:
        raise ValueError(f"{name} must offer private_gradient, noise_state and l2_clip_norm "
                         f"(like fedpriv.defenses.DPSGDPlan); {type(mechanism).__name__} lacks {missing}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MisreportedMechanism:
    """A deliberately buggy mechanism for audits: releases with ``actual``, claims ``claimed``.

    ``private_gradient``, ``noise_state`` and ``l2_clip_norm`` come from ``actual``;
    ``report`` and ``dp_event`` from ``claimed``. E.g. a plan that claims noise
    multiplier 2 but adds 0.5: ``MisreportedMechanism.with_noise_scaled(plan, 0.25)``.
    An audit of it must certify more than its claimed epsilon; one that does not has
    too little power to catch such a bug.

    Attributes:
      claimed: the plan whose privacy is claimed (needs ``report(delta)``).
      actual: the plan that runs (a :class:`PrivateGradientMechanism`).

    Raises:
      ValueError: on construction, if ``actual`` is not a mechanism or ``claimed`` has no
        ``report``.

    **Formal guarantees**

    - Bound: none. This object exists to violate its claim; never train with it.
    """

    claimed: Any
    actual: Any

    def __post_init__(self):
        _check_mechanism(self.actual, "actual")
        if not hasattr(self.claimed, "report"):
            raise ValueError(f"claimed must offer report(delta) (like fedpriv.defenses.DPSGDPlan), "
                             f"got {type(self.claimed).__name__}")

    @classmethod
    def with_noise_scaled(cls, plan: Any, noise_factor: float) -> "MisreportedMechanism":
        """``plan`` claimed, ``plan`` with ``noise_multiplier * noise_factor`` run.

        Args:
          plan: a dataclass plan with a ``noise_multiplier`` field (e.g. ``DPSGDPlan``).
          noise_factor: a finite number >= 0 (0.25: a quarter of the claimed noise).

        Raises:
          ValueError: if ``noise_factor`` is negative or not finite, or ``plan`` has no
            ``noise_multiplier`` field.
        """
        noise_factor = _validation.check_noise_multiplier(noise_factor, "noise_factor")
        if not dataclasses.is_dataclass(plan) or not hasattr(plan, "noise_multiplier"):
            raise ValueError(f"plan must be a dataclass plan with a noise_multiplier field, "
                             f"got {type(plan).__name__}")
        actual = dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier * noise_factor)
        return cls(claimed=plan, actual=actual)

    @property
    def l2_clip_norm(self) -> float:
        return self.actual.l2_clip_norm

    def noise_state(self, key: PRNGKey) -> Any:
        return self.actual.noise_state(key)

    def private_gradient(self, per_example_grads: Params, example_mask: Array, noise_state: Any) -> tuple:
        return self.actual.private_gradient(per_example_grads, example_mask, noise_state)

    def report(self, delta: float) -> Any:
        """The CLAIMED plan's privacy report (what the buggy code would write to metrics)."""
        return self.claimed.report(delta)

    def dp_event(self) -> Any:
        """The CLAIMED plan's ``dp_accounting`` event."""
        return self.claimed.dp_event()


# -- white-box gradient canaries ------------------------------------------------------------

def make_gradient_canary(params_template: Params, key: PRNGKey, *, norm: float, kind: str = "random",
                         coordinate: int = 0) -> Params:
    """A canary gradient shaped like ``params_template`` with global L2 norm ``norm``.

    Args:
      params_template: a pytree of arrays (only shapes and float dtypes are used).
      key: draws the random direction (unused for ``"dirac"``).
      norm: the canary's L2 norm, > 0; the clip norm makes it a worst-case example
        (clipping leaves it unchanged and it moves the sum by the full sensitivity).
      kind: ``"random"`` (a uniformly random direction) or ``"dirac"`` (all mass on one
        coordinate, counted in ``jax.tree_util.tree_leaves`` order, each leaf raveled).
      coordinate: the Dirac coordinate, in ``[0, number of parameters)``.

    Returns:
      A pytree like ``params_template`` (float32 leaves).

    Raises:
      ValueError: if an argument is outside its range.
    """
    norm = _validation.check_positive(norm, "norm")
    kind = _validation.check_choice(kind, "kind", CANARY_KINDS)
    leaves, treedef = jax.tree_util.tree_flatten(params_template)
    if not leaves:
        raise ValueError("params_template must have at least one leaf, got an empty pytree")
    sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
    total = sum(sizes)
    if kind == "dirac":
        if isinstance(coordinate, bool) or not isinstance(coordinate, numbers.Integral) or not 0 <= coordinate < total:
            raise ValueError(f"coordinate must be an integer in [0, {total}), got {coordinate!r}")
        flat = jnp.zeros((total,), jnp.float32).at[coordinate].set(norm)
    else:
        direction = jax.random.normal(key, (total,), jnp.float32)
        flat = direction * (norm / jnp.linalg.norm(direction))
    pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
    return jax.tree_util.tree_unflatten(treedef, [piece.reshape(np.shape(leaf))
                                                  for piece, leaf in zip(pieces, leaves)])


def canary_scores(released: Params, canary: Params) -> Array:
    """Inner product of a released update with the canary's unit direction.

    Args:
      released: a pytree like ``canary``, optionally with extra LEADING axes (e.g.
        ``[T, *param_shape]`` for T trials).
      canary: the canary gradient (any non-zero norm; only its direction is used).

    Returns:
      Scores with the leading axes of ``released`` (a scalar for one update).
    """
    canary_norm = jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(canary)))

    def leaf_score(update, direction):
        axes = tuple(range(update.ndim - direction.ndim, update.ndim))
        return jnp.sum(update * direction, axis=axes)

    per_leaf = jax.tree_util.tree_leaves(jax.tree_util.tree_map(leaf_score, released, canary))
    return sum(per_leaf) / canary_norm


@dataclasses.dataclass(frozen=True, kw_only=True)
class CanaryTrials:
    """Scores of independent trials with and without the canary.

    Attributes:
      present_scores: ``[N]`` float64 scores of trials whose batch held the canary.
      absent_scores: ``[N]`` float64 scores of trials without it.
      canary_norm: the canary gradient's L2 norm.
      kind: ``"random"`` or ``"dirac"``.
    """

    present_scores: np.ndarray
    absent_scores: np.ndarray
    canary_norm: float
    kind: str


def _default_template() -> Params:
    return {"weights": jnp.zeros((16,), jnp.float32)}


def run_gradient_canary_trials(mechanism: PrivateGradientMechanism, num_trials: int, key: PRNGKey, *,
                               params_template: Params | None = None, kind: str = "random",
                               canary_norm: float | None = None, background_grads: Params | None = None,
                               ) -> CanaryTrials:
    """Runs ``num_trials`` releases with and ``num_trials`` without a gradient canary.

    Every trial calls ``mechanism.private_gradient`` once on the per-example gradients
    ``[background..., canary]`` with the canary's mask 1 (present) or 0 (absent), with a
    fresh noise state from its own key, and scores the release with
    :func:`canary_scores`. All ``2 * num_trials`` trials run in one ``jit(vmap(...))``.
    With no background the neighbouring datasets are {canary} and {} (the worst case
    for add/remove-one, as in Nasr et al. 2021).

    Args:
      mechanism: a :class:`PrivateGradientMechanism` (e.g. a one-step, q = 1
        ``DPSGDPlan``, or a :class:`MisreportedMechanism`).
      num_trials: trials per side, ``>= 1``.
      key: splits into the canary key and one noise key per trial.
      params_template: the parameter pytree's shapes (default: 16 float32 weights).
      kind: ``"random"`` or ``"dirac"`` canary (see :func:`make_gradient_canary`).
      canary_norm: the canary's norm, > 0 (default ``mechanism.l2_clip_norm``).
      background_grads: optional per-example gradients of the other examples, leaves
        ``[B0, *param_shape]``, the same in every trial.

    Returns:
      A :class:`CanaryTrials` (host NumPy arrays), ready for
      :func:`fedpriv.privacy.auditing.clopper_pearson_audit` and friends.

    Raises:
      ValueError: if an argument is invalid (before any compute).

    **Formal guarantees**

    - Bound: none by itself. The trials are independent given the canary (fresh noise
      key each), the condition the estimators need; the scores are the released updates
      projected on the canary, so the audit tests what the mechanism actually releases.
    - Relation: add/remove-one canary. Unit: one row of the per-example axis (an
      example for DP-SGD, a client update for client-level DP).
    - Not protected: this is an attack; it audits one step (multi-step runs compose).

    References:
      Nasr, Song, Thakurta, Papernot, Carlini 2021, arXiv 2101.04535 (gradient canaries).
      Nasr et al. 2023, "Tight Auditing of Differentially Private Machine Learning",
      arXiv 2302.07956 (Dirac canaries).
    """
    _check_mechanism(mechanism, "mechanism")
    num_trials = _validation.check_steps(num_trials, "num_trials")
    kind = _validation.check_choice(kind, "kind", CANARY_KINDS)
    norm = _validation.check_positive(mechanism.l2_clip_norm if canary_norm is None else canary_norm, "canary_norm")
    template = _default_template() if params_template is None else params_template
    canary_key, noise_key = jax.random.split(key)
    canary = make_gradient_canary(template, canary_key, norm=norm, kind=kind)
    if background_grads is None:
        per_example = jax.tree_util.tree_map(lambda leaf: leaf[None], canary)
    else:
        per_example = jax.tree_util.tree_map(lambda back, leaf: jnp.concatenate([back, leaf[None]]).astype(jnp.float32),
                                             background_grads, canary)
    batch = jax.tree_util.tree_leaves(per_example)[0].shape[0]
    present_mask = jnp.ones((batch,), jnp.float32)
    absent_mask = present_mask.at[-1].set(0.0)
    masks = jnp.concatenate([jnp.tile(present_mask, (num_trials, 1)), jnp.tile(absent_mask, (num_trials, 1))])
    keys = jax.random.split(noise_key, 2 * num_trials)

    def one_trial(mask, trial_key):
        released, _, _ = mechanism.private_gradient(per_example, mask, mechanism.noise_state(trial_key))
        return canary_scores(released, canary)

    scores = np.asarray(jax.jit(jax.vmap(one_trial))(masks, keys), dtype=np.float64)
    return CanaryTrials(present_scores=scores[:num_trials], absent_scores=scores[num_trials:], canary_norm=norm,
                        kind=kind)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneRunCanaries:
    """Scores of ``m`` canaries from ONE release, and which were included.

    Attributes:
      scores: ``[m]`` float64, canary ``i``'s score.
      included: ``[m]`` bool, whether canary ``i`` was in the batch (fair coin each).
    """

    scores: np.ndarray
    included: np.ndarray


def run_one_run_gradient_canaries(mechanism: PrivateGradientMechanism, num_canaries: int, key: PRNGKey, *,
                                  canary_norm: float | None = None) -> OneRunCanaries:
    """One release with ``m`` Dirac canaries, each included with probability 1/2.

    Canary ``i`` is the gradient ``canary_norm * e_i`` in an ``m``-dimensional parameter
    vector (mutually orthogonal, so canaries do not mask each other); one call of
    ``mechanism.private_gradient`` releases their noisy clipped sum, and canary ``i``'s
    score is coordinate ``i`` of the release. Memory is ``O(m^2)`` floats (per-example
    gradients ``[m, m]``): ``m = 1000`` takes 4 MB.

    Args:
      mechanism: a :class:`PrivateGradientMechanism`.
      num_canaries: ``m >= 1``.
      key: splits into the inclusion coins and the noise key.
      canary_norm: each canary's norm, > 0 (default ``mechanism.l2_clip_norm``).

    Returns:
      A :class:`OneRunCanaries` for :func:`fedpriv.privacy.auditing.one_run_audit`.

    Raises:
      ValueError: if an argument is invalid.

    **Formal guarantees**

    - Bound: none by itself; the inclusions are independent fair coins, as the one-run
      theorem requires.
    - Relation: add/remove-one canary. Unit: one row of the per-example axis.
    - Not protected: this is an attack on one release.

    References:
      Steinke, Nasr, Jagielski 2023, arXiv 2305.08846.
    """
    _check_mechanism(mechanism, "mechanism")
    m = _validation.check_steps(num_canaries, "num_canaries")
    norm = _validation.check_positive(mechanism.l2_clip_norm if canary_norm is None else canary_norm, "canary_norm")
    coin_key, noise_key = jax.random.split(key)
    included = jax.random.bernoulli(coin_key, 0.5, (m,))

    def release(mask, trial_key):
        per_example = {"weights": norm * jnp.eye(m, dtype=jnp.float32)}
        released, _, _ = mechanism.private_gradient(per_example, mask, mechanism.noise_state(trial_key))
        return released["weights"]

    scores = jax.jit(release)(included.astype(jnp.float32), noise_key)
    return OneRunCanaries(scores=np.asarray(scores, dtype=np.float64), included=np.asarray(included, dtype=bool))


# -- black-box input canaries ---------------------------------------------------------------

def craft_input_canaries(model: Model, key: PRNGKey, *, num_canaries: int, kind: str = "uniform_noise",
                         value_range: tuple[float, float] = (0.0, 1.0), outlier_scale: float = 10.0,
                         label: int | None = None) -> Batch:
    """Out-of-distribution canary records for a black-box (input-space) audit.

    Args:
      model: gives ``input_shape`` and ``num_classes``.
      key: draws inputs and labels.
      num_canaries: ``>= 1``.
      kind: ``"uniform_noise"`` (every input element uniform in ``value_range``: noise
        images, unlike any scan) or ``"far_gaussian"`` (elements ``N(0,
        outlier_scale^2)``: far outliers among standardised tabular features).
      value_range: ``(low, high)`` with ``low < high``, for ``"uniform_noise"``.
      outlier_scale: > 0, for ``"far_gaussian"``.
      label: a fixed class for every canary, or ``None`` for uniformly random labels
        (canaries then disagree with anything the model learns from real data).

    Returns:
      ``{"x": float32 [num_canaries, *input_shape], "y": int32 [num_canaries]}``.

    Raises:
      ValueError: if an argument is outside its range.

    References:
      Jagielski, Ullman, Oprea 2020, arXiv 2006.07709.
      Nasr, Song, Thakurta, Papernot, Carlini 2021, arXiv 2101.04535.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fedpriv.typing.Model, got {type(model).__name__}")
    count = _validation.check_steps(num_canaries, "num_canaries")
    kind = _validation.check_choice(kind, "kind", INPUT_CANARY_KINDS)
    low, high = (float(value) for value in value_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"value_range must be finite (low, high) with low < high, got {value_range!r}")
    outlier_scale = _validation.check_positive(outlier_scale, "outlier_scale")
    if label is not None and (isinstance(label, bool) or not isinstance(label, numbers.Integral)
                              or not 0 <= label < model.num_classes):
        raise ValueError(f"label must be None or an integer in [0, {model.num_classes}), got {label!r}")
    x_key, y_key = jax.random.split(key)
    shape = (count, *model.input_shape)
    if kind == "uniform_noise":
        x = jax.random.uniform(x_key, shape, jnp.float32, minval=low, maxval=high)
    else:
        x = outlier_scale * jax.random.normal(x_key, shape, jnp.float32)
    if label is None:
        y = jax.random.randint(y_key, (count,), 0, model.num_classes, jnp.int32)
    else:
        y = jnp.full((count,), label, jnp.int32)
    return {"x": x, "y": y}


def loss_scores(losses, reference_losses=None) -> np.ndarray:
    """Membership scores from losses: lower loss means "member", so a higher score.

    ``score = -loss``, or ``reference_loss - loss`` when per-canary reference losses
    (e.g. from a model trained without the canaries) are given, which removes each
    canary's intrinsic difficulty.

    Args:
      losses: array of finite losses (any shape).
      reference_losses: ``None`` or an array of the same shape.

    Returns:
      float64 scores shaped like ``losses``.

    Raises:
      ValueError: if the losses are not finite or the shapes differ.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0 or not np.all(np.isfinite(losses)):
        raise ValueError(f"losses must be a non-empty array of finite values, got shape {losses.shape}")
    if reference_losses is None:
        return -losses
    reference = np.asarray(reference_losses, dtype=np.float64)
    if reference.shape != losses.shape:
        raise ValueError(f"reference_losses must have the shape of losses {losses.shape}, got {reference.shape}")
    if not np.all(np.isfinite(reference)):
        raise ValueError("reference_losses must be finite")
    return reference - losses


def input_canary_scores(model: Model, params: Params, canaries: Batch, *,
                        reference_params: Params | None = None) -> np.ndarray:
    """Scores of input canaries under one trained model: :func:`loss_scores` of their losses.

    For many trials, call once per trained model (or vmap ``model.per_example_loss``
    over stacked params and pass the losses to :func:`loss_scores`).

    Args:
      model: the :class:`fedpriv.typing.Model`.
      params: the trained params of this trial.
      canaries: ``{"x": [m, ...], "y": [m]}`` from :func:`craft_input_canaries`.
      reference_params: optional params of a model trained without the canaries.

    Returns:
      ``[m]`` float64 scores (higher: looks like a member).

    Raises:
      ValueError: if ``model`` is not a Model or the losses are not finite.

    **Formal guarantees**

    - Bound: none; scores feed the estimators of :mod:`fedpriv.privacy.auditing`, whose
      bounds hold for any score function fixed before the trials.
    - Not protected: this is an attack (black box: it reads only losses).
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fedpriv.typing.Model, got {type(model).__name__}")
    losses = model.per_example_loss(params, canaries)
    reference = None if reference_params is None else model.per_example_loss(reference_params, canaries)
    return loss_scores(losses, reference)
