"""Local DP on a client's message: the ONE place an update-level LDP mechanism is composed.

:class:`LocalDPPlan` privatises a client's whole update (a pytree) before it leaves the
hospital, so the guarantee holds against the server and every other observer without
trusting anyone: clip the whole update, then release it through one of

- ``"gaussian"``: the analytic Gaussian mechanism for a target ``(epsilon, delta)``
  (Balle & Wang 2018) on the L2-clipped update;
- ``"laplace"``: the Laplace mechanism, pure ``epsilon``, on the L1-clipped update;
- ``"privunit"``: PrivUnit2 (Bhowmick et al. 2018), pure ``epsilon``, unbiased, on the
  L2-clipped update (see :mod:`fedpriv.defenses.privunit`).

Neighbouring relation. Local DP protects the client's whole input: two local datasets of
a client are neighbours whatever they hold, so after clipping to a ball of radius ``C`` the
message moves by at most the ball's diameter ``2 C`` (replace-one of the whole message).
That is the sensitivity the noise is sized from. For accounting, the Gaussian event's noise
multiplier is ``stddev / (2 C)``, i.e. normalised to sensitivity 1, which is what
dp-accounting's add/remove-one Gaussian describes; so :mod:`fedpriv.privacy`'s accountants
(add/remove-one) give the right epsilon without the replace-one pitfall noted in
:mod:`fedpriv.privacy.events`. Pure-epsilon mechanisms are accounted by their dominating
pair, binary randomized response with the same epsilon (every ``epsilon``-DP mechanism is
a post-processing of it; Kairouz, Oh, Viswanath 2015), under replace-one.

Per-client use mirrors :mod:`fedpriv.defenses.noise`: one state per client from split keys::

    states = jax.vmap(plan.state)(jax.random.split(noise_key, num_clients))
    released, states = jax.vmap(plan.privatize)(client_updates, states)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar, NamedTuple

import dp_accounting
from dp_accounting import gaussian_mechanism
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import optax
from scipy import optimize
from scipy import stats

from fedpriv.defenses import noise as noise_lib
from fedpriv.defenses import privunit as privunit_lib
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.typing import Array, Params, PRNGKey

MECHANISMS: tuple[str, ...] = ("gaussian", "laplace", "privunit")
_L2_MECHANISMS = ("gaussian", "privunit")


class LocalDPState(NamedTuple):
    """State of a local DP transform: the key the next ``update`` will split."""

    key: PRNGKey


def _global_norm(update: Params, order: int) -> Array:
    leaves = [jnp.ravel(leaf).astype(jnp.promote_types(leaf.dtype, jnp.float32))
              for leaf in jax.tree_util.tree_leaves(update)]
    if order == 1:
        return sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves)
    squared = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _scaled_to_ball(update: Params, clip_norm: float, order: int) -> Params:
    # clip / max(norm, clip) is min(1, clip / norm) without a division by zero at norm 0.
    factor = clip_norm / jnp.maximum(_global_norm(update, order), clip_norm)
    return jax.tree_util.tree_map(lambda leaf: leaf * factor.astype(leaf.dtype), update)


def clip_update_l2(update: Params, l2_clip_norm: float) -> Params:
    """Scales the whole update (all leaves together) to global L2 norm ``<= l2_clip_norm``.

    **Formal guarantees**

    - Bound: the result lies in the L2 ball of radius ``l2_clip_norm``, so two clipped
      updates differ by at most ``2 * l2_clip_norm`` in L2 norm. No DP by itself.
    - Relation: replace-one of the client's whole message. Unit: one client's update.
    - Not protected: everything, until a mechanism randomises it.
    """
    _validation.check_positive(l2_clip_norm, "l2_clip_norm")
    return _scaled_to_ball(update, l2_clip_norm, order=2)


def clip_update_l1(update: Params, l1_clip_norm: float) -> Params:
    """Scales the whole update (all leaves together) to global L1 norm ``<= l1_clip_norm``.

    **Formal guarantees**

    - Bound: the result lies in the L1 ball of radius ``l1_clip_norm``, so two clipped
      updates differ by at most ``2 * l1_clip_norm`` in L1 norm. No DP by itself.
    - Relation: replace-one of the client's whole message. Unit: one client's update.
    - Not protected: everything, until a mechanism randomises it.
    """
    _validation.check_positive(l1_clip_norm, "l1_clip_norm")
    return _scaled_to_ball(update, l1_clip_norm, order=1)


def _laplace_noised(updates: Params, key: PRNGKey, scale: float) -> tuple[Params, PRNGKey]:
    next_key, draw_key = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    leaf_keys = jax.random.split(draw_key, max(len(leaves), 1))
    noised = []
    for leaf, leaf_key in zip(leaves, leaf_keys):
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32
        noised.append(leaf + jnp.asarray(scale, dtype) * jax.random.laplace(leaf_key, jnp.shape(leaf), dtype))
    return jax.tree_util.tree_unflatten(treedef, noised), next_key


def add_laplace_noise(scale: float, key: PRNGKey) -> optax.GradientTransformation:
    """Transform adding independent ``Laplace(0, scale)`` noise to every coordinate.

    The Laplace counterpart of :func:`fedpriv.defenses.add_gaussian_noise`: the key lives
    in the state, each update splits it, each leaf gets its own sub-key.

    Args:
      scale: the Laplace scale ``b >= 0`` (density ``exp(-|x| / b) / (2 b)``).
      key: a JAX PRNG key, the state's key after ``init``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`LocalDPState`.

    Raises:
      ValueError: if ``scale`` is not a finite number ``>= 0``.

    **Formal guarantees**

    - Bound: none by itself. On a value of L1 sensitivity ``Delta`` with
      ``scale = Delta / epsilon`` it is the ``epsilon``-DP Laplace mechanism; use it
      through :class:`LocalDPPlan`, which sizes ``scale``.
    - Relation and unit: those of the sensitivity bound the caller established.
    - Not protected: reusing a state repeats the noise; floating-point Laplace sampling is
      not a secure sampler (Mironov 2012).
    """
    _validation.check_noise_multiplier(scale, "scale")

    def init_fn(params):
        del params
        return LocalDPState(key=key)

    def update_fn(updates, state, params=None):
        del params
        noised, next_key = _laplace_noised(updates, state.key, scale)
        return noised, LocalDPState(key=next_key)

    return optax.GradientTransformation(init_fn, update_fn)


@functools.lru_cache(maxsize=256)
def _analytic_gaussian_noise_multiplier(epsilon: float, delta: float) -> float:
    # dp-accounting's exact inversion of Balle & Wang's Theorem 8 (sensitivity 1).
    return float(gaussian_mechanism.get_sigma_gaussian(epsilon, delta))


def _randomized_response_delta(epsilon: float, per_round_epsilon: float, rounds: int) -> float:
    """Exact delta at ``epsilon`` of ``rounds`` binary randomized responses with ``per_round_epsilon``.

    With ``j`` of the ``rounds`` answers agreeing with input 0, the privacy loss is
    ``(2 j - rounds) * per_round_epsilon`` and
    ``delta(epsilon) = sum_j P0(j) [1 - exp(epsilon - loss_j)]_+`` (Kairouz, Oh, Viswanath
    2015, Thm. 3.3, the optimal composition of pure-DP mechanisms).
    """
    agreements = np.arange(rounds + 1)
    loss = (2.0 * agreements - rounds) * per_round_epsilon
    keep = loss > epsilon
    if not np.any(keep):
        return 0.0
    log_probability = stats.binom.logpmf(agreements[keep], rounds, 1.0 / (1.0 + math.exp(-per_round_epsilon)))
    return float(np.sum(np.exp(log_probability) * -np.expm1(epsilon - loss[keep])))


def _randomized_response_epsilon(per_round_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest epsilon with ``_randomized_response_delta(epsilon) <= delta``."""
    if _randomized_response_delta(0.0, per_round_epsilon, rounds) <= delta:
        return 0.0
    high = rounds * per_round_epsilon
    return float(optimize.brentq(lambda epsilon: _randomized_response_delta(epsilon, per_round_epsilon, rounds)
                                 - delta, 0.0, high, xtol=1e-12 * max(high, 1.0)))


def _randomized_response_event(epsilon: float) -> dp_accounting.DpEvent:
    # Binary randomized response keeps the true bit with probability e^eps / (1 + e^eps):
    # dp-accounting's noise parameter q replaces it by a uniform bit, so q / 2 = 1 / (1 + e^eps).
    return dp_accounting.RandomizedResponseDpEvent(noise_parameter=2.0 / (1.0 + math.exp(epsilon)), num_buckets=2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalDPPlan:
    """Local DP of one client's whole update, one release per round.

    Attributes:
      mechanism: ``"gaussian"``, ``"laplace"`` or ``"privunit"``.
      epsilon: the per-round epsilon of one client's release, finite and ``> 0``.
      delta: the per-round delta, in (0, 1), for ``"gaussian"`` only; ``None`` (pure DP)
        for the other two.
      l2_clip_norm: radius ``C`` of the L2 ball the update is clipped to, ``> 0``; required
        for ``"gaussian"`` and ``"privunit"``, ``None`` for ``"laplace"``.
      l1_clip_norm: radius of the L1 ball, ``> 0``; required for ``"laplace"`` only.

    Raises:
      ValueError: on construction, if a field is missing, superfluous or out of range;
        the message names the field, the value and what is allowed.

    **Formal guarantees**

    - Bound: each :meth:`privatize` call is ``(epsilon, delta)``-DP (``delta = 0`` for the
      pure mechanisms) for the released update; anything computed from the release alone
      (aggregation, attacks, the next global model) is post-processing.
    - Relation: replace-one of the client's whole message, i.e. local DP: any two inputs of
      the client (any two local datasets) are neighbours.
    - Unit: one client's whole update in one round (all its records at once).
    - Not protected: composition over rounds and over anything else the client releases
      is the caller's ledger (:meth:`epsilon_after`, :meth:`dp_event`); that the client took
      part in a round, and the dimension of the update, are public; reusing a state
      repeats the noise; a mechanism with ``delta > 0`` may fail with probability about
      ``delta``; floating-point samplers are not secure samplers.

    Example:
      >>> plan = LocalDPPlan(mechanism="gaussian", epsilon=4.37718, delta=1e-5, l2_clip_norm=0.5)
      >>> round(plan.noise_multiplier, 4), plan.sensitivity
      (1.0, 1.0)

    References:
      Balle, Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy:
      Analytical Calibration and Optimal Denoising", arXiv 1805.06530.
      Dwork, McSherry, Nissim, Smith 2006, "Calibrating Noise to Sensitivity in Private
      Data Analysis" (the Laplace mechanism).
      Bhowmick, Duchi, Freudiger, Kapoor, Rogers 2018, arXiv 1812.00984 (PrivUnit2).
      Kairouz, Oh, Viswanath 2015, "The Composition Theorem for Differential Privacy",
      arXiv 1311.0776 (randomized response dominates every pure-epsilon mechanism).
    """

    unit: ClassVar[str] = "client"
    relation: ClassVar[str] = "replace_one"

    mechanism: str
    epsilon: float
    delta: float | None = None
    l2_clip_norm: float | None = None
    l1_clip_norm: float | None = None

    def __post_init__(self):
        _validation.check_choice(self.mechanism, "mechanism", MECHANISMS)
        object.__setattr__(self, "epsilon", _validation.check_epsilon(self.epsilon))
        if self.mechanism == "gaussian":
            if self.delta is None:
                raise ValueError("delta must be in the open interval (0, 1) for mechanism='gaussian', got None")
            object.__setattr__(self, "delta", _validation.check_delta(self.delta))
        elif self.delta is not None:
            raise ValueError(f"delta must be None for mechanism={self.mechanism!r} (a pure epsilon-DP mechanism), "
                             f"got {self.delta!r}")
        required, unused = (("l2_clip_norm", "l1_clip_norm") if self.mechanism in _L2_MECHANISMS
                            else ("l1_clip_norm", "l2_clip_norm"))
        if getattr(self, unused) is not None:
            raise ValueError(f"{unused} must be None for mechanism={self.mechanism!r} (it clips in the "
                             f"{required[:2].upper()} norm), got {getattr(self, unused)!r}")
        value = getattr(self, required)
        if value is None:
            raise ValueError(f"{required} must be a finite number > 0 for mechanism={self.mechanism!r}, got None")
        object.__setattr__(self, required, _validation.check_positive(value, required))

    # -- sizes ---------------------------------------------------------------------------

    @property
    def clip_norm(self) -> float:
        """The clip radius in the mechanism's norm (L2, or L1 for Laplace)."""
        return self.l1_clip_norm if self.mechanism == "laplace" else self.l2_clip_norm

    @property
    def sensitivity(self) -> float:
        """Diameter of the clip ball, ``2 * clip_norm`` (L1 for Laplace, else L2): replace-one."""
        return 2.0 * self.clip_norm

    @property
    def noise_multiplier(self) -> float:
        """Gaussian only: stddev / sensitivity, from the analytic Gaussian at ``(epsilon, delta)``."""
        self._require("gaussian", "noise_multiplier")
        return _analytic_gaussian_noise_multiplier(self.epsilon, self.delta)

    @property
    def noise_stddev(self) -> float:
        """Gaussian only: per-coordinate stddev, ``noise_multiplier * 2 * l2_clip_norm``."""
        return self.noise_multiplier * self.sensitivity

    @property
    def laplace_scale(self) -> float:
        """Laplace only: per-coordinate scale ``b = 2 * l1_clip_norm / epsilon``."""
        self._require("laplace", "laplace_scale")
        return self.sensitivity / self.epsilon

    def privunit_parameters(self, dimension: int) -> privunit_lib.PrivUnitParameters:
        """PrivUnit only: the constants for an update with ``dimension`` entries."""
        self._require("privunit", "privunit_parameters")
        return privunit_lib.privunit_parameters(self.epsilon, dimension)

    def _require(self, mechanism: str, what: str) -> None:
        if self.mechanism != mechanism:
            raise ValueError(f"{what} is defined for mechanism={mechanism!r} only, this plan has "
                             f"mechanism={self.mechanism!r}")

    # -- the mechanism -------------------------------------------------------------------

    def clip(self, update: Params) -> Params:
        """Clips the whole update to the plan's ball (L2, or L1 for Laplace); no DP alone."""
        if self.mechanism == "laplace":
            return _scaled_to_ball(update, self.l1_clip_norm, order=1)
        return _scaled_to_ball(update, self.l2_clip_norm, order=2)

    def state(self, key: PRNGKey) -> LocalDPState:
        """The initial state for ``key`` (vmap over split keys for many clients)."""
        return LocalDPState(key=key)

    def transform(self, key: PRNGKey) -> optax.GradientTransformation:
        """The plan as an optax-style transform (``init`` ignores params; ``update`` privatises)."""

        def init_fn(params):
            del params
            return LocalDPState(key=key)

        def update_fn(updates, state, params=None):
            del params
            return self.privatize(updates, state)

        return optax.GradientTransformation(init_fn, update_fn)

    def privatize(self, update: Params, state: LocalDPState) -> tuple[Params, LocalDPState]:
        """Clips and randomises one client's whole update; returns it and the next state.

        Jittable (close over the plan or pass it as a static argument) and vmappable over
        clients. PrivUnit's constants depend on the number of entries, read from the
        static shapes at trace time.

        Args:
          update: the client's update, a pytree of float arrays.
          state: from :meth:`state`; each call splits its key.

        Returns:
          ``(released_update, next_state)``. Gaussian and Laplace add noise to the clipped
          update (``E = clipped update``); PrivUnit returns an unbiased estimate of the
          clipped update whose global L2 norm is exactly
          ``l2_clip_norm * privunit_parameters(d).output_norm``.

        Raises:
          ValueError: for ``"privunit"``, if the update has fewer than 2 entries.

        **Formal guarantees**

        - Bound: ``(epsilon, delta)``-DP per call (pure ``epsilon`` for Laplace and PrivUnit).
        - Relation: replace-one of the whole message (local DP). Unit: one client's update.
        - Not protected: composition over calls (the caller's ledger); a reused state.
        """
        if self.mechanism == "gaussian":
            clipped = self.clip(update)
            noised, next_state = noise_lib._noised(clipped, noise_lib.GaussianNoiseState(key=state.key),
                                                   self.noise_stddev)
            return noised, LocalDPState(key=next_state.key)
        if self.mechanism == "laplace":
            noised, next_key = _laplace_noised(self.clip(update), state.key, self.laplace_scale)
            return noised, LocalDPState(key=next_key)
        return self._privunit(update, state)

    def _privunit(self, update: Params, state: LocalDPState) -> tuple[Params, LocalDPState]:
        flat, unravel = ravel_pytree(update)
        parameters = self.privunit_parameters(int(flat.size))
        flat = flat.astype(jnp.float32)
        next_key, sign_key, mechanism_key = jax.random.split(state.key, 3)
        norm = jnp.linalg.norm(flat)
        radius = jnp.float32(self.l2_clip_norm)
        # A point inside the ball becomes a random unit direction with mean x / C (keep
        # x / |x| with probability (1 + |x| / C) / 2, else flip it); PrivUnit2 then sees a
        # unit vector, and scaling its unbiased release by C gives back E = x.
        ratio = jnp.minimum(norm, radius) / radius
        basis = jnp.zeros_like(flat).at[0].set(1.0)
        direction = jnp.where(norm > 0, flat / jnp.where(norm > 0, norm, 1.0), basis)
        keep = jax.random.bernoulli(sign_key, (1.0 + ratio) / 2.0)
        direction = jnp.where(keep, direction, -direction)
        released = radius * privunit_lib.privunit2(direction, mechanism_key, parameters)
        return unravel(released), LocalDPState(key=next_key)

    # -- accounting (host) ---------------------------------------------------------------

    def basic_composition(self, rounds: int) -> tuple[float, float]:
        """``(rounds * epsilon, rounds * delta)``: basic composition over ``rounds`` releases.

        **Formal guarantees**

        - Bound: ``rounds`` calls of :meth:`privatize` (on any adaptively chosen inputs of
          the same client) are jointly ``(rounds * epsilon, rounds * delta)``-DP.
        - Relation: replace-one of the client's whole data. Unit: one client.
        - Not protected: releases not counted in ``rounds``.
        """
        rounds = _validation.check_steps(rounds, "rounds")
        return rounds * self.epsilon, rounds * (self.delta or 0.0)

    @property
    def accounting_relation(self) -> dp_accounting.NeighboringRelation:
        """The dp-accounting relation :meth:`dp_event` must be accounted under.

        Gaussian: add/remove-one with the noise multiplier normalised by ``2 C`` (exactly the
        replace-one guarantee of the message). Laplace and PrivUnit: replace-one, the only
        relation dp-accounting accepts for randomized response.
        """
        if self.mechanism == "gaussian":
            return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        return dp_accounting.NeighboringRelation.REPLACE_ONE

    def dp_event(self, rounds: int = 1) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of ``rounds`` releases by one client.

        Gaussian: ``SelfComposed(Gaussian(noise_multiplier), rounds)``. Laplace and
        PrivUnit: ``rounds`` binary ``RandomizedResponse`` events with this epsilon in a
        ``ComposedDpEvent`` (one event when ``rounds == 1``): randomized response is the
        dominating pair of any pure ``epsilon``-DP mechanism, so the accounting does not
        depend on the mechanism's internals and is tight in the worst case. The events are
        listed one by one because dp-accounting 0.6.0's PLD accountant ignores the count
        of a ``SelfComposedDpEvent`` of randomized response (100 rounds at epsilon 1 came
        out as epsilon 1). Account the event under :attr:`accounting_relation`; or use
        :meth:`epsilon_after`, which is exact for the pure mechanisms.

        Raises:
          ValueError: if ``rounds`` is not an integer ``>= 1``.

        **Formal guarantees**

        - Bound: faithful to ``rounds`` calls of :meth:`privatize` with fresh states.
        - Relation: replace-one of the client's whole data (see :attr:`accounting_relation`).
        - Unit: one client. Not protected: releases missing from ``rounds``.
        """
        rounds = _validation.check_steps(rounds, "rounds")
        if self.mechanism == "gaussian":
            return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(self.noise_multiplier), rounds)
        release = _randomized_response_event(self.epsilon)
        return release if rounds == 1 else dp_accounting.ComposedDpEvent([release] * rounds)

    def epsilon_after(self, rounds: int, *, delta: float | None = None, accountant: str = "pld") -> float:
        """The epsilon of one client's ``rounds`` releases at total ``delta``.

        Args:
          rounds: number of rounds the client released an update, ``>= 1``.
          delta: the target delta of the composition, in (0, 1). Required for Gaussian;
            for the pure mechanisms ``None`` gives basic composition (``delta = 0``).
          accountant: ``"pld"`` or ``"rdp"``, the accountant for the Gaussian (see
            :func:`fedpriv.privacy.epsilon_for`); the pure mechanisms need none: their
            composition is computed exactly in closed form.

        Returns:
          Epsilon as a float. For the pure mechanisms with a ``delta``, the optimal
          composition of ``rounds`` randomized responses (Kairouz, Oh, Viswanath 2015,
          Thm. 3.3), never above basic composition.

        Raises:
          ValueError: on a bad argument (before any compute).

        **Formal guarantees**

        - Bound: ``rounds`` calls of :meth:`privatize` are jointly ``(epsilon, delta)``-DP.
        - Relation: replace-one of the client's whole data. Unit: one client.
        - Not protected: releases not counted in ``rounds``.
        """
        rounds = _validation.check_steps(rounds, "rounds")
        _validation.check_choice(accountant, "accountant", accountant_lib.ACCOUNTANTS)
        if self.mechanism == "gaussian":
            if delta is None:
                raise ValueError("delta must be in the open interval (0, 1) for mechanism='gaussian', got None")
            delta = _validation.check_delta(delta)
            return accountant_lib.epsilon_for(self.dp_event(rounds), delta=delta, accountant=accountant)
        basic = rounds * self.epsilon
        if delta is None:
            return basic
        delta = _validation.check_delta(delta)
        return min(basic, _randomized_response_epsilon(self.epsilon, rounds, delta))
