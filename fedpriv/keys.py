"""One run seed becomes independent named key streams (DESIGN §2).

Each stream is derived with ``fold_in`` from a fixed index, so adding a stream never
changes the others and the same seed gives bit-identical results.

Randomness and the DP guarantee. By default every stream, the DP noise and sampling
included, is derived from the run seed, which ``metrics.json`` records: a reproducible
*simulation*, whose guarantee holds only for an adversary who does not know the seed.
``secure_randomness=True`` is the deployable mode: the streams a DP guarantee rests on
(client sampling, the hospitals' noise, the server's noise, the records' Poisson
batches: :data:`PRIVATE_STREAMS`) start from 64 bits of OS entropy (``os.urandom``) that
are never written anywhere, so no one can replay the noise; the cohort, the model's
initialisation and the attack stay seeded. Two limits remain in that mode: JAX's
threefry generator is keyed with those 64 bits (not a certified cryptographic sampler),
and floating-point Gaussian sampling leaks through its low-order bits (Mironov 2012,
"On significance of the least significant bits for differential privacy", CCS 2012).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

STREAMS = ("init", "data", "sampling", "clients", "noise", "attack", "batches", "membership")
PRIVATE_STREAMS = ("sampling", "clients", "noise", "batches")


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """The named streams: model ``init``; the cohort and its partition (``data``); client
    ``sampling``; per-client randomness (``clients``: DP-SGD and local-DP noise); the server's
    ``noise`` and stages; the ``attack``; the records' Poisson ``batches``; the ``membership``
    inclusion coins of the membership experiment."""

    init: jax.Array
    data: jax.Array
    sampling: jax.Array
    clients: jax.Array
    noise: jax.Array
    attack: jax.Array
    batches: jax.Array
    membership: jax.Array
    secure_randomness: bool = False


def entropy_key() -> jax.Array:
    """A key from 64 bits of OS entropy (never derived from, or written with, the run seed)."""
    return jax.random.wrap_key_data(np.frombuffer(os.urandom(8), dtype=np.uint32))


def run_keys(seed: int, *, secure_randomness: bool = False) -> RunKeys:
    """Derives the named key streams from one integer run seed (see the module docstring)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(secure_randomness, bool):
        raise ValueError(f"secure_randomness must be true or false, got {secure_randomness!r}")
    root = jax.random.key(int(seed))
    streams = {name: jax.random.fold_in(root, index) for index, name in enumerate(STREAMS)}
    if secure_randomness:
        streams.update({name: entropy_key() for name in PRIVATE_STREAMS})
    return RunKeys(**streams, secure_randomness=secure_randomness)


def numpy_generator(key: jax.Array) -> np.random.Generator:
    """A host-side NumPy generator seeded deterministically from a JAX key.

    Host-side data code (partitioning, phantoms, sampling masks) uses NumPy; this keeps
    it on the same named streams as the jitted code.
    """
    words = np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel()
    return np.random.default_rng(np.random.SeedSequence(words.tolist()))
