"""PrivUnit2: an unbiased, pure epsilon-LDP randomizer for unit vectors (Bhowmick et al. 2018).

Given a unit vector ``u`` in ``R^d``, PrivUnit2 draws ``V`` uniformly from the unit sphere,
conditioned to fall in the spherical cap ``{v : <v, u> >= gamma}`` with probability ``p``
and outside it with probability ``1 - p``, and releases ``V / m`` where ``m = E<V, u>``,
so that ``E[V / m] = u``.

Why the privacy is exact here. The output density (with respect to the uniform measure on
the sphere) is ``p / P_cap`` inside the cap of ``u`` and ``(1 - p) / (1 - P_cap)`` outside,
with ``P_cap = P(<Z, u> >= gamma)`` for ``Z`` uniform on the sphere. For any two inputs
``u, u'`` and any output, the density ratio is at most
``[p / P_cap] / [(1 - p) / (1 - P_cap)]``, attained by an output in the cap of ``u`` but
not of ``u'``, so the mechanism is ``epsilon``-DP with

    epsilon = log(p / (1 - p)) + log((1 - P_cap) / P_cap)     (p >= 1/2, P_cap <= 1/2)

and no smaller epsilon holds. We write ``epsilon = epsilon_0 + epsilon_1`` with the first
term ``epsilon_0`` (the coin) and the second ``epsilon_1`` (the cap).

The coordinate ``t = <Z, u>`` of a uniform point has density proportional to
``(1 - t^2)^((d - 3) / 2)`` on ``[-1, 1]``, i.e. ``(1 + t) / 2 ~ Beta(alpha, alpha)`` with
``alpha = (d - 1) / 2``. Hence ``P_cap = I_{(1 - gamma)/2}(alpha, alpha)`` (regularized
incomplete beta) and, integrating ``t (1 - t^2)^((d-3)/2)`` in closed form,

    m = (1 - gamma^2)^alpha / ((d - 1) B(1/2, alpha)) * (p / P_cap - (1 - p) / (1 - P_cap)).

The host-side constants (:func:`privunit_parameters`) are float64 SciPy; the sampler
(:func:`privunit2`) is pure JAX, jittable and vmappable over clients.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from scipy import special

from fedpriv.privacy import _validation
from fedpriv.typing import Array, PRNGKey

# The most epsilon spent on the cap. The sampler's acceptance rate is about the cap mass
# 1 / (1 + e^epsilon_1), so an unbounded epsilon_1 could make one release take millions of
# iterations; at 10 a release takes ~350 loop iterations at worst (milliseconds). The rest
# of the budget goes to the coin: still exactly epsilon-DP, with a variance that is optimal
# up to epsilon ~ 9 and ~3 % (epsilon 12) to ~20 % (epsilon 16) larger beyond.
MAX_CAP_EPSILON = 10.0

# Proposals drawn per rejection-sampling iteration of the conditional cap coordinate: the
# acceptance probability is min(P_cap, 1 - P_cap) >= 1 / (1 + e^epsilon_1), so a batch
# keeps the expected number of loop iterations near one for the budgets used in practice.
_PROPOSALS_PER_ITERATION = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivUnitParameters:
    """The constants of PrivUnit2 for one dimension and budget (host-side, float64).

    Attributes:
      dimension: ``d``, the length of the flattened vector, ``>= 2``.
      epsilon: the total pure-DP epsilon, ``epsilon_0 + epsilon_1``.
      cap_probability: ``p = e^epsilon_0 / (1 + e^epsilon_0)``, the chance to sample in the cap.
      threshold: ``gamma >= 0``, the cap is ``{v : <v, u> >= gamma}``.
      cap_mass: ``P_cap = P(<Z, u> >= gamma)`` for ``Z`` uniform on the sphere.
      scale: ``m = E<V, u>``; the release is ``V / m`` and has norm ``1 / m``.
    """

    dimension: int
    epsilon: float
    cap_probability: float
    threshold: float
    cap_mass: float
    scale: float

    @property
    def output_norm(self) -> float:
        """The norm of every release for a unit input: ``1 / m``."""
        return 1.0 / self.scale


def _cap_mass(threshold: float, dimension: int) -> float:
    alpha = (dimension - 1) / 2.0
    return float(special.betainc(alpha, alpha, (1.0 - threshold) / 2.0))


def _threshold_for_cap_mass(cap_mass: float, dimension: int) -> float:
    alpha = (dimension - 1) / 2.0
    return float(1.0 - 2.0 * special.betaincinv(alpha, alpha, cap_mass))


def privunit_epsilon(cap_probability: float, threshold: float, dimension: int) -> float:
    """The exact pure-DP epsilon of PrivUnit2 with ``(p, gamma)`` in dimension ``d``.

    Args:
      cap_probability: ``p`` in [1/2, 1).
      threshold: ``gamma`` in [0, 1).
      dimension: ``d >= 2``.

    Returns:
      ``log(p / (1 - p)) + log((1 - P_cap) / P_cap)`` (see the module docstring).

    Raises:
      ValueError: if an argument is outside its allowed range.
    """
    _check_dimension(dimension)
    if not 0.5 <= cap_probability < 1.0:
        raise ValueError(f"cap_probability must be in [0.5, 1), got {cap_probability!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    cap_mass = _cap_mass(threshold, dimension)
    return math.log(cap_probability / (1.0 - cap_probability)) + math.log((1.0 - cap_mass) / cap_mass)


def privunit_scale(cap_probability: float, threshold: float, dimension: int) -> float:
    """``m = E<V, u>`` of PrivUnit2 with ``(p, gamma)`` in dimension ``d`` (closed form)."""
    _check_dimension(dimension)
    alpha = (dimension - 1) / 2.0
    cap_mass = _cap_mass(threshold, dimension)
    log_front = alpha * math.log1p(-threshold**2) - math.log(dimension - 1) - special.betaln(0.5, alpha)
    return math.exp(log_front) * (cap_probability / cap_mass - (1.0 - cap_probability) / (1.0 - cap_mass))


def _check_dimension(dimension) -> None:
    if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)) or dimension < 2:
        raise ValueError(f"dimension (the number of entries of the clipped update) must be an integer >= 2 "
                         f"for PrivUnit2, got {dimension!r}")


def _split(epsilon: float, coin_epsilon: float, dimension: int) -> tuple[float, float, float, float]:
    """``(p, gamma, P_cap, m)`` spending ``coin_epsilon`` on the coin and the rest on the cap."""
    cap_probability = 1.0 / (1.0 + math.exp(-coin_epsilon))
    cap_mass = 1.0 / (1.0 + math.exp(epsilon - coin_epsilon))
    threshold = max(_threshold_for_cap_mass(cap_mass, dimension), 0.0)
    cap_mass = _cap_mass(threshold, dimension)  # the mass of the threshold actually used
    return cap_probability, threshold, cap_mass, privunit_scale(cap_probability, threshold, dimension)


@functools.lru_cache(maxsize=256)
def privunit_parameters(epsilon: float, dimension: int) -> PrivUnitParameters:
    """PrivUnit2's constants for budget ``epsilon``: the split of minimum variance.

    The variance of a release is ``1 / m^2 - 1`` (its norm is ``1 / m`` and its mean is the
    unit input), so the best split of ``epsilon`` into coin and cap maximises ``m``; we find
    it with a bounded scalar search over ``epsilon_0`` in ``[0, epsilon]``, keeping the
    cap's share ``epsilon_1 <= MAX_CAP_EPSILON`` so the sampler stays fast. The threshold is
    then rounded to the float64 ``gamma`` actually used and epsilon is recomputed from it,
    so :attr:`PrivUnitParameters.epsilon` is the exact epsilon of the released constants.

    Args:
      epsilon: pure-DP budget of one release, finite and ``> 0``.
      dimension: ``d >= 2``, the number of entries of the vector.

    Returns:
      :class:`PrivUnitParameters`.

    Raises:
      ValueError: if ``epsilon`` is not a finite number > 0 or ``dimension < 2``.

    **Formal guarantees**

    - Bound: :func:`privunit2` with these constants is ``epsilon``-DP (pure), with the
      returned ``epsilon <= `` the requested one up to float64 rounding (about 1e-12).
    - Relation: any two unit input vectors (local DP). Unit: whatever the vector encodes.
    - Not protected: the dimension ``d`` (public); float32 rounding of ``gamma`` inside the
      sampler moves the cap mass by about 1e-7 relative.

    References:
      Bhowmick, Duchi, Freudiger, Kapoor, Rogers 2018, "Protection Against Reconstruction
      and Its Applications in Private Federated Learning", arXiv 1812.00984 (PrivUnit2).
    """
    epsilon = _validation.check_epsilon(epsilon)
    _check_dimension(dimension)
    dimension = int(dimension)

    def negative_log_scale(coin_epsilon):
        return -math.log(_split(epsilon, float(coin_epsilon), dimension)[3])

    lowest = max(0.0, epsilon - MAX_CAP_EPSILON)
    result = optimize.minimize_scalar(negative_log_scale, bounds=(lowest, epsilon), method="bounded",
                                      options={"xatol": 1e-6 * max(epsilon, 1.0)})
    candidates = [lowest, epsilon, float(result.x)]
    coin_epsilon = min(candidates, key=negative_log_scale)
    cap_probability, threshold, cap_mass, scale = _split(epsilon, coin_epsilon, dimension)
    actual = math.log(cap_probability / (1.0 - cap_probability)) + math.log((1.0 - cap_mass) / cap_mass)
    return PrivUnitParameters(dimension=dimension, epsilon=actual, cap_probability=cap_probability,
                              threshold=threshold, cap_mass=cap_mass, scale=scale)


def _log1p_minus_identity(e: Array) -> Array:
    """``log(1 + e) - e``, accurate in float32 also for tiny ``e`` (large dimensions)."""
    series = e * e * (-0.5 + e * (1.0 / 3.0 + e * (-0.25 + e * 0.2)))
    return jnp.where(jnp.abs(e) < 1e-2, series, jnp.log1p(e) - e)


def _coordinate_proposals(key: PRNGKey, alpha: float, count: int) -> tuple[Array, Array]:
    """``count`` proposals of ``t`` with ``(1 + t) / 2 ~ Beta(alpha, alpha)``, and which are valid.

    ``t = (X - Y) / (X + Y)`` for independent ``X, Y ~ Gamma(alpha)``, each drawn by
    Marsaglia & Tsang's squeeze-free rejection method (shape ``alpha + 1`` times
    ``U^(1 / alpha)`` when ``alpha < 1``). A proposal is valid when both gamma draws are
    accepted; valid proposals are exact draws. Writing the method out (instead of calling
    ``jax.random.gamma``, itself a loop) keeps one flat rejection loop, which compiles
    several times faster under ``vmap``, and lets ``t`` be formed from ``v - 1`` directly:
    the scale ``alpha - 1/3`` cancels, so ``t`` keeps its precision when ``d`` is large.

    References:
      Marsaglia, Tsang 2000, "A Simple Method for Generating Gamma Variables", ACM TOMS 26(3).
    """
    shape = alpha if alpha >= 1.0 else alpha + 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    normal_key, uniform_key, boost_key = jax.random.split(key, 3)
    z = jax.random.normal(normal_key, (2, count), jnp.float32)
    u = jax.random.uniform(uniform_key, (2, count), jnp.float32, minval=jnp.finfo(jnp.float32).tiny)
    cz = jnp.float32(c) * z
    excess = cz * (3.0 + cz * (3.0 + cz))  # (1 + c z)^3 - 1, without cancellation
    valid = (1.0 + cz > 0) & (jnp.log(u) < 0.5 * z * z + jnp.float32(d) * _log1p_minus_identity(excess))
    if alpha >= 1.0:
        coordinate = (excess[0] - excess[1]) / (2.0 + excess[0] + excess[1])
    else:
        boost = jnp.exp(jnp.log(jax.random.uniform(boost_key, (2, count), jnp.float32,
                                                  minval=jnp.finfo(jnp.float32).tiny)) / alpha)
        gammas = (1.0 + excess) * boost
        coordinate = (gammas[0] - gammas[1]) / (gammas[0] + gammas[1])
    return coordinate, valid[0] & valid[1]


def _conditional_cap_coordinate(key: PRNGKey, in_cap: Array, threshold: float, alpha: float) -> Array:
    """``t = <V, u>`` of a uniform ``V`` conditioned on ``t >= gamma`` (in_cap) or ``t < gamma``.

    Exact rejection sampling: batches of proposals from :func:`_coordinate_proposals` until
    one is valid and on the requested side; the first accepted proposal of an i.i.d.
    sequence has exactly the conditional law.
    """
    gamma = jnp.float32(threshold)

    def body(carry):
        loop_key, _, _ = carry
        next_key, draw_key = jax.random.split(loop_key)
        proposals, valid = _coordinate_proposals(draw_key, alpha, _PROPOSALS_PER_ITERATION)
        ok = valid & jnp.where(in_cap, proposals >= gamma, proposals < gamma)
        return next_key, proposals[jnp.argmax(ok)], jnp.any(ok)

    initial = (key, jnp.zeros((), jnp.float32), jnp.zeros((), bool))
    _, coordinate, _ = jax.lax.while_loop(lambda carry: ~carry[2], body, initial)
    return coordinate


def privunit2(direction: Array, key: PRNGKey, parameters: PrivUnitParameters) -> Array:
    """One PrivUnit2 release of the unit vector ``direction``: unbiased, norm ``1 / m``.

    Pure JAX: jittable, and vmappable over clients (vmap over ``direction`` and ``key``;
    ``parameters`` is a static Python object).

    Args:
      direction: ``[d]`` float vector of L2 norm 1 (not checked: it may be traced).
      key: a JAX PRNG key; every draw of the release comes from it.
      parameters: from :func:`privunit_parameters` with the same ``d``.

    Returns:
      ``[d]`` float32 release ``V / m`` with ``E[V / m] = direction`` and norm ``1 / m``.

    Raises:
      ValueError: if ``direction`` is not ``[parameters.dimension]``.

    **Formal guarantees**

    - Bound: ``parameters.epsilon``-DP (pure), for any two unit inputs.
    - Relation: replace the input by any other unit vector (local DP).
    - Unit: the whole vector.
    - Not protected: an input that is not a unit vector (use the plan, which clips and
      normalises); repeated releases of correlated inputs compose (the caller's ledger);
      the PRNG is counter-based, not a cryptographic sampler.

    References:
      Bhowmick et al. 2018, arXiv 1812.00984, Algorithm 1 (PrivUnit2).
    """
    if direction.shape != (parameters.dimension,):
        raise ValueError(f"direction must have shape ({parameters.dimension},) to match parameters.dimension, "
                         f"got {direction.shape}")
    direction = direction.astype(jnp.float32)
    coin_key, cap_key, sphere_key = jax.random.split(key, 3)
    in_cap = jax.random.bernoulli(coin_key, parameters.cap_probability)
    alpha = (parameters.dimension - 1) / 2.0
    coordinate = _conditional_cap_coordinate(cap_key, in_cap, parameters.threshold, alpha)
    # A uniform direction orthogonal to u: project a Gaussian off u and normalise. If the
    # projection underflows to zero (probability 0 in exact arithmetic), fall back to any
    # fixed unit vector orthogonal to u so the output norm stays exact.
    gaussian = jax.random.normal(sphere_key, direction.shape, jnp.float32)
    orthogonal = gaussian - jnp.dot(gaussian, direction) * direction
    norm = jnp.linalg.norm(orthogonal)
    fallback = jnp.roll(direction, 1) - jnp.dot(jnp.roll(direction, 1), direction) * direction
    orthogonal = jnp.where(norm > 0, orthogonal / jnp.where(norm > 0, norm, 1.0),
                           fallback / jnp.maximum(jnp.linalg.norm(fallback), 1e-30))
    sample = coordinate * direction + jnp.sqrt(jnp.maximum(1.0 - coordinate**2, 0.0)) * orthogonal
    return sample / jnp.float32(parameters.scale)
