"""One run seed becomes independent named key streams (DESIGN §2).

Each stream is derived with ``fold_in`` from a fixed index, so adding a stream never
changes the others and the same seed gives bit-identical results.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

STREAMS = ("init", "data", "sampling", "clients", "noise", "attack")


@dataclasses.dataclass(frozen=True)
class RunKeys:
    init: jax.Array
    data: jax.Array
    sampling: jax.Array
    clients: jax.Array
    noise: jax.Array
    attack: jax.Array


def run_keys(seed: int) -> RunKeys:
    """Derives the named key streams from one integer run seed."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    root = jax.random.key(int(seed))
    return RunKeys(**{name: jax.random.fold_in(root, index) for index, name in enumerate(STREAMS)})


def numpy_generator(key: jax.Array) -> np.random.Generator:
    """A host-side NumPy generator seeded deterministically from a JAX key.

    Host-side data code (partitioning, phantoms, sampling masks) uses NumPy; this keeps
    it on the same named streams as the jitted code.
    """
    words = np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel()
    return np.random.default_rng(np.random.SeedSequence(words.tolist()))
