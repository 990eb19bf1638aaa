"""Gaussian noise as an optax-style transform that carries its own key (DESIGN §4).

The key lives in the transform's state, so the transform is a pure function of its
inputs: the same key reproduces the same noise bit for bit, and each ``update`` splits
the key so consecutive calls draw fresh noise.

Per-client noise: build one state per client by vmapping over split keys::

    keys = jax.random.split(noise_key, num_clients)
    states = jax.vmap(lambda key: add_gaussian_noise(stddev, key).init(params))(keys)
    transform = add_gaussian_noise(stddev, noise_key)  # update reads only the state's key
    noised, states = jax.vmap(transform.update)(client_updates, states)

Do NOT vmap ``init`` of a single transform over clients: its state holds the one key
the factory got, so every client would get the SAME noise (and the noise of one client
would reveal the noise of all, cancelling it from any difference of updates).

Use this transform directly only through a plan (e.g. :class:`fedpriv.defenses.DPSGDPlan`)
that sizes ``stddev`` from the sensitivity of what is noised; user code never computes
a noise stddev.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedpriv.privacy import _validation
from fedpriv.typing import Array, Params, PRNGKey


class GaussianNoiseState(NamedTuple):
    """State of :func:`add_gaussian_noise`: the key the next ``update`` will split."""

    key: PRNGKey


def _check_stddev(stddev) -> None:
    if isinstance(stddev, numbers.Real):
        _validation.check_noise_multiplier(stddev, "stddev")


def _noised(updates: Params, state: GaussianNoiseState, stddev: float | Array) -> tuple[Params, GaussianNoiseState]:
    """Adds independent ``N(0, stddev^2)`` to every coordinate of every leaf."""
    next_key, draw_key = jax.random.split(state.key)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    leaf_keys = jax.random.split(draw_key, max(len(leaves), 1))
    noised = []
    for leaf, leaf_key in zip(leaves, leaf_keys):
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32
        noise = jax.random.normal(leaf_key, jnp.shape(leaf), dtype)
        noised.append(leaf + jnp.asarray(stddev, dtype) * noise)
    return jax.tree_util.tree_unflatten(treedef, noised), GaussianNoiseState(key=next_key)


def add_gaussian_noise(stddev: float | Array, key: PRNGKey) -> optax.GradientTransformation:
    """Transform adding independent ``N(0, stddev^2)`` noise to every coordinate.

    Args:
      stddev: noise standard deviation per coordinate, ``>= 0`` (a Python number, or an
        array under tracing).
      key: a JAX PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``); it becomes the
        state's key in ``init``.

    Returns:
      An ``optax.GradientTransformation`` with ``init(params) -> GaussianNoiseState(key)``
      and ``update(updates, state, params=None) -> (updates + noise, new_state)``. Each
      update splits the state's key into the next state's key and the key for this
      draw; each leaf gets its own sub-key, so leaves get independent noise. ``update``
      uses only the state's key, so one transform can update any client's state.

    Raises:
      ValueError: if ``stddev`` is a number ``< 0`` (or not finite).

    **Formal guarantees**

    - Bound: none by itself. If the noised value has L2 sensitivity ``Delta`` under a
      neighbouring relation and ``stddev = noise_multiplier * Delta``, one update is the
      Gaussian mechanism with that noise multiplier (e.g. ``(alpha, alpha / (2
      noise_multiplier^2))``-RDP); the plan that sizes ``stddev`` states the guarantee.
    - Relation and unit: those of the sensitivity bound the caller established.
    - Not protected: reusing a state (or a key) repeats the noise, and two releases with
      the same noise leak their difference exactly; the noise comes from a
      counter-based PRNG and floating-point Gaussians, not a cryptographically secure
      sampler (floating-point attacks on DP noise, Mironov 2012, are out of scope).

    Example:
      >>> transform = add_gaussian_noise(0.0, jax.random.key(0))
      >>> state = transform.init({"w": jnp.ones(2)})
      >>> transform.update({"w": jnp.ones(2)}, state)[0]["w"]
      Array([1., 1.], dtype=float32)
    """
    _check_stddev(stddev)

    def init_fn(params: Params) -> GaussianNoiseState:
        del params
        return GaussianNoiseState(key=key)

    def update_fn(updates: Params, state: GaussianNoiseState, params: Params | None = None):
        del params
        return _noised(updates, state, stddev)

    return optax.GradientTransformation(init_fn, update_fn)


def update_noise_stddev(noise_stddev: float, expected_batch_size: float, *, learning_rate: float = 1.0,
                        local_steps: int = 1) -> float:
    """Per-coordinate stddev of the DP noise in a client update, from public plan facts.

    A DP-SGD step adds ``N(0, noise_stddev^2)`` to the clipped sum (``noise_stddev`` is
    the plan's ``noise_multiplier * l2_clip_norm``) and divides by the public expected
    batch size; plain local SGD sums ``local_steps`` independent such draws times the
    learning rate. No noise (``noise_stddev == 0``) gives 0.
    """
    if noise_stddev == 0:
        return 0.0
    for name, value in (("noise_stddev", noise_stddev), ("expected_batch_size", expected_batch_size),
                        ("learning_rate", learning_rate)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
    return float(learning_rate * noise_stddev / expected_batch_size * math.sqrt(local_steps))
