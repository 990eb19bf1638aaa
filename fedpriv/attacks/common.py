"""Pieces every gradient-matching attack shares: observation checks and distances."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fedpriv.typing import Model, Observation, Params


def validate_observation(observation: Observation, model: Model, victims: Sequence[int] = ()) -> None:
    """Raises ``ValueError`` unless the observation fits ``model`` and holds the victims.

    Checked before any compute: the params sent must have the model's tree structure
    and shapes, every update leaf must be ``[C, *param_shape]``, and each victim must be
    a valid position on the observed client axis.
    """
    metadata = observation.metadata
    if tuple(metadata.input_shape) != tuple(model.input_shape):
        raise ValueError(f"observation input_shape {metadata.input_shape} does not match model "
                         f"{model.name!r} input_shape {model.input_shape}")
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *model.input_shape)))
    expected_def = jax.tree_util.tree_structure(expected)
    for name, tree in (("params", observation.params), ("updates", observation.updates)):
        if jax.tree_util.tree_structure(tree) != expected_def:
            raise ValueError(f"observation.{name} does not have the parameter structure of model {model.name!r}")
    num_observed = None
    for path, want, sent, update in zip(jax.tree_util.tree_leaves_with_path(expected),
                                        jax.tree_util.tree_leaves(expected),
                                        jax.tree_util.tree_leaves(observation.params),
                                        jax.tree_util.tree_leaves(observation.updates)):
        name = jax.tree_util.keystr(path[0])
        if tuple(sent.shape) != tuple(want.shape):
            raise ValueError(f"observation.params{name} has shape {tuple(sent.shape)}, model "
                             f"{model.name!r} expects {tuple(want.shape)}")
        if tuple(update.shape[1:]) != tuple(want.shape):
            raise ValueError(f"observation.updates{name} has shape {tuple(update.shape)}, expected "
                             f"[clients, *{tuple(want.shape)}]")
        num_observed = update.shape[0]
    bad = [v for v in victims if not 0 <= v < num_observed]
    if bad:
        raise ValueError(f"victims {bad} are not positions among the {num_observed} observed updates")


def observed_part(update: Params, metadata) -> Params:
    """The part of an update the server observes: without the layers each hospital keeps
    private under model partitioning (``metadata.private_layers``), which the attacker can
    neither see nor simulate (it only guesses them from its stale copy)."""
    if not metadata.private_layers:
        return update
    return {name: leaf for name, leaf in update.items() if name not in metadata.private_layers}


def flat_dot(a: Params, b: Params) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def cosine_distance(a: Params, b: Params) -> jax.Array:
    """1 − cosine similarity over all parameters at once (Geiping et al. 2020, arXiv 2003.14053)."""
    norms = jnp.sqrt(flat_dot(a, a)) * jnp.sqrt(flat_dot(b, b))
    return 1.0 - flat_dot(a, b) / jnp.maximum(norms, 1e-12)


def squared_distance(a: Params, b: Params) -> jax.Array:
    """Sum of squared differences over all parameters (DLG's L2 matching, arXiv 1906.08935)."""
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def total_variation(images: jax.Array) -> jax.Array:
    """Anisotropic total variation: mean absolute difference of neighbouring pixels along
    height and width (axes -3 and -2 of ``[..., H, W, C]``)."""
    along_height = jnp.mean(jnp.abs(images[..., 1:, :, :] - images[..., :-1, :, :]))
    along_width = jnp.mean(jnp.abs(images[..., :, 1:, :] - images[..., :, :-1, :]))
    return along_height + along_width
