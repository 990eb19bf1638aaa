"""Gradient compression as a defense: sparsify or quantize the client's update before it leaves.

Compression was proposed to save bandwidth; Zhu et al. (2019) observed that pruning the
smallest entries of the gradient also degrades gradient inversion. None of these
transforms gives a formal privacy guarantee: they are heuristics to be measured (attack
quality against bytes sent), not accounted.

Four optax-style transforms on a client update (pytree in, pytree out, jittable):

- :func:`top_k_sparsification`: keep the ``k`` largest-magnitude entries, per tensor or
  over the whole update, zero the rest (DLG's defense).
- :func:`random_sparsification`: keep each entry with probability ``p``, optionally
  rescaled by ``1 / p`` so the result is unbiased.
- :func:`stochastic_quantization`: ``b`` bits per entry, unbiased stochastic rounding to a
  uniform grid per tensor (QSGD-style).
- :func:`sign_compression`: deterministic 1 bit per entry, optionally scaled by the
  tensor's mean magnitude.

Random transforms keep their key in their state (DESIGN §4); per-client states come from
vmapping over split keys. :class:`CompressionPlan` is the config object: it validates the
choice, yields the transform and reports the bytes one client sends
(:meth:`CompressionPlan.compressed_bytes`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.privacy import _validation
from fedpriv.typing import Params, PRNGKey

KINDS: tuple[str, ...] = ("top_k", "random_sparsification", "quantization", "sign")
SCOPES: tuple[str, ...] = ("per_tensor", "global")
MAX_BITS = 16  # float32 holds the 2^16 grid positions and their rounding offsets exactly enough
INDEX_BYTES = 4  # an int32 position per kept entry
SCALE_BYTES = 4  # one float32 scale per tensor


# The one parameter each kind needs (and no other kind may set).
_PARAMETER_OF_KIND = {"top_k": "keep_fraction", "random_sparsification": "keep_probability", "quantization": "bits"}


class CompressionState(NamedTuple):
    """State of a random compression transform: the key the next ``update`` will split."""

    key: PRNGKey


def _check_fraction(value, name: str) -> float:
    allowed = "in the half-open interval (0, 1]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a number {allowed}, got {value!r}")
    return float(value)


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
    return int(bits)


def kept_count(keep_fraction: float, size: int) -> int:
    """``k = ceil(keep_fraction * size)``, at least 1 and at most ``size``.

    The product is rounded to 9 decimals first, so ``0.1 * 10`` keeps 1 entry, not 2.
    """
    keep_fraction = _check_fraction(keep_fraction, "keep_fraction")
    return min(size, max(1, math.ceil(round(keep_fraction * size, 9))))


def _top_k_flat(flat: jax.Array, k: int) -> jax.Array:
    # lax.top_k puts the lower index first among equal magnitudes, so ties are broken
    # deterministically (as a stable argsort of -|x| would).
    _, indices = jax.lax.top_k(jnp.abs(flat), k)
    return jnp.zeros_like(flat).at[indices].set(flat[indices])


def _top_k_global(updates: Params, keep_fraction: float) -> Params:
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    if not leaves:
        return updates
    dtype = jnp.result_type(*leaves)
    flat = jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])
    kept = _top_k_flat(flat, kept_count(keep_fraction, int(flat.size)))
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    pieces = [kept[start:stop].reshape(leaf.shape).astype(leaf.dtype)
              for leaf, start, stop in zip(leaves, offsets[:-1], offsets[1:])]
    return jax.tree_util.tree_unflatten(treedef, pieces)


def _top_k_per_tensor(updates: Params, keep_fraction: float) -> Params:
    def prune(leaf):
        if leaf.size == 0:
            return leaf
        return _top_k_flat(jnp.ravel(leaf), kept_count(keep_fraction, int(leaf.size))).reshape(leaf.shape)

    return jax.tree_util.tree_map(prune, updates)


def top_k_sparsification(keep_fraction: float, *, scope: str = "per_tensor") -> optax.GradientTransformation:
    """Keeps the ``k`` largest-magnitude entries and zeroes the rest (magnitude pruning).

    Pruning the smallest ``p`` percent of the gradient (Zhu et al. 2019, Sec. 6) is
    ``keep_fraction = 1 - p / 100``. ``k = ceil(keep_fraction * n)`` (see :func:`kept_count`)
    with ``n`` the entries of each tensor (``scope="per_tensor"``) or of the whole update
    (``scope="global"``). Among equal magnitudes the entry that comes first (in the flattened
    tensor, leaves in ``jax.tree_util`` order) is kept.

    Args:
      keep_fraction: fraction of entries kept, in (0, 1].
      scope: ``"per_tensor"`` or ``"global"``.

    Returns:
      A stateless ``optax.GradientTransformation`` (state ``optax.EmptyState``).

    Raises:
      ValueError: if ``keep_fraction`` is outside (0, 1] or ``scope`` is unknown.

    **Formal guarantees**

    - Bound: none; a heuristic defense with no differential privacy. The kept entries are
      released exactly, and their positions reveal where the update is large.

    References:
      Zhu, Liu, Han 2019, "Deep Leakage from Gradients", arXiv 1906.08935 (Sec. 6).
      Aji, Heafield 2017, "Sparse Communication for Distributed Gradient Descent",
      arXiv 1704.05021.
    """
    keep_fraction = _check_fraction(keep_fraction, "keep_fraction")
    _validation.check_choice(scope, "scope", SCOPES)

    def update_fn(updates, state, params=None):
        del params
        if scope == "global":
            return _top_k_global(updates, keep_fraction), state
        return _top_k_per_tensor(updates, keep_fraction), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _per_leaf_keys(key: PRNGKey, updates: Params):
    next_key, draw_key = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    return next_key, leaves, treedef, jax.random.split(draw_key, max(len(leaves), 1))


def random_sparsification(keep_probability: float, key: PRNGKey, *, rescale: bool = True
                          ) -> optax.GradientTransformation:
    """Keeps each entry independently with probability ``p``; optionally rescales by ``1 / p``.

    With ``rescale=True`` every entry is ``x / p`` with probability ``p`` and 0 otherwise,
    so the result is an unbiased estimate of the update (variance ``x^2 (1 - p) / p``).

    Args:
      keep_probability: ``p`` in (0, 1].
      key: a JAX PRNG key, the state's key after ``init``.
      rescale: divide the kept entries by ``p``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`CompressionState`; each
      update splits the key, each leaf gets its own sub-key.

    Raises:
      ValueError: if ``keep_probability`` is outside (0, 1].

    **Formal guarantees**

    - Bound: none; kept entries are released exactly. No differential privacy.

    References:
      Wangni, Wang, Liu, Zhang 2018, "Gradient Sparsification for Communication-Efficient
      Distributed Optimization", arXiv 1710.09854.
    """
    keep_probability = _check_fraction(keep_probability, "keep_probability")

    def update_fn(updates, state, params=None):
        del params
        next_key, leaves, treedef, leaf_keys = _per_leaf_keys(state.key, updates)
        kept = []
        for leaf, leaf_key in zip(leaves, leaf_keys):
            mask = jax.random.bernoulli(leaf_key, keep_probability, leaf.shape)
            value = leaf / jnp.asarray(keep_probability, leaf.dtype) if rescale else leaf
            kept.append(jnp.where(mask, value, jnp.zeros((), leaf.dtype)))
        return jax.tree_util.tree_unflatten(treedef, kept), CompressionState(key=next_key)

    return optax.GradientTransformation(lambda params: CompressionState(key=key), update_fn)


def _quantize_leaf(leaf: jax.Array, bits: int, key: PRNGKey) -> jax.Array:
    levels = 2**bits - 1  # intervals of the grid; 2^bits points
    values = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
    scale = jnp.max(jnp.abs(values)) if values.size else jnp.zeros((), values.dtype)
    safe_scale = jnp.where(scale > 0, scale, 1.0)
    position = jnp.clip((values / safe_scale + 1.0) * (levels / 2.0), 0.0, levels)
    lower = jnp.floor(position)
    round_up = jax.random.uniform(key, values.shape, values.dtype) < position - lower
    index = jnp.minimum(lower + round_up, levels)
    step = 2.0 * scale / levels
    quantized = jnp.where(scale > 0, -scale + index * step, 0.0)
    return quantized.astype(leaf.dtype)


def stochastic_quantization(bits: int, key: PRNGKey) -> optax.GradientTransformation:
    """Unbiased stochastic quantization to ``bits`` bits per entry, one scale per tensor.

    Each tensor is scaled by ``s = max |x|`` and every entry is rounded to one of the
    ``2^bits`` evenly spaced points of ``[-s, s]`` (step ``2 s / (2^bits - 1)``): up with
    probability equal to its distance from the lower neighbour in steps, else down. So
    ``E[Q(x)] = x`` and ``|Q(x) - x| < step`` (within one level). One bit gives
    ``{-s, +s}`` (a stochastic sign). The sender sends ``s`` and the ``bits``-bit indices.

    This is QSGD's unbiased stochastic rounding (Alistarh et al. 2017) with two
    differences that make the bit count exact: the scale is the max norm rather than the
    L2 norm (a finer grid for the same bits) and the sign is folded into a symmetric grid
    rather than sent as an extra bit.

    Args:
      bits: bits per entry, an integer in [1, 16].
      key: a JAX PRNG key, the state's key after ``init``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`CompressionState`.

    Raises:
      ValueError: if ``bits`` is not an integer in [1, 16].

    **Formal guarantees**

    - Bound: none; no differential privacy (the scale and the coarse values are released).

    References:
      Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, "QSGD: Communication-Efficient SGD via
      Gradient Quantization and Encoding", arXiv 1610.02132.
    """
    bits = _check_bits(bits)

    def update_fn(updates, state, params=None):
        del params
        next_key, leaves, treedef, leaf_keys = _per_leaf_keys(state.key, updates)
        quantized = [_quantize_leaf(leaf, bits, leaf_key) for leaf, leaf_key in zip(leaves, leaf_keys)]
        return jax.tree_util.tree_unflatten(treedef, quantized), CompressionState(key=next_key)

    return optax.GradientTransformation(lambda params: CompressionState(key=key), update_fn)


def sign_compression(*, scaled: bool = True) -> optax.GradientTransformation:
    """Deterministic 1-bit compression: the sign of every entry (0 counts as +).

    With ``scaled=True`` each tensor's signs are multiplied by its mean magnitude
    ``mean |x|`` (sent as one float), so the result has the tensor's L1 norm; otherwise
    the raw ``+-1`` signs are sent (signSGD). Biased by design.

    Args:
      scaled: multiply by the tensor's mean magnitude.

    Returns:
      A stateless ``optax.GradientTransformation``.

    **Formal guarantees**

    - Bound: none; no differential privacy (the sign pattern is released exactly).

    References:
      Bernstein, Wang, Azizzadenesheli, Anandkumar 2018, "signSGD: Compressed Optimisation
      for Non-Convex Problems", arXiv 1802.04434.
      Karimireddy, Rebjock, Stich, Jaggi 2019, "Error Feedback Fixes SignSGD and other
      Gradient Compression Schemes", arXiv 1901.09847 (the scaled sign).
    """
    if not isinstance(scaled, bool):
        raise ValueError(f"scaled must be True or False, got {scaled!r}")

    def compress(leaf):
        signs = jnp.where(leaf >= 0, 1.0, -1.0).astype(leaf.dtype)
        if not scaled or leaf.size == 0:
            return signs
        return signs * jnp.mean(jnp.abs(leaf))

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(compress, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def dense_bytes(params: Params) -> int:
    """Bytes of the uncompressed update: every entry at its dtype's size."""
    return int(sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionPlan:
    """Which compression a client applies to its update, and what it costs on the wire.

    Attributes:
      kind: ``"top_k"``, ``"random_sparsification"``, ``"quantization"`` or ``"sign"``.
      keep_fraction: ``top_k`` only: fraction of entries kept, in (0, 1].
      scope: ``top_k`` only: ``"per_tensor"`` or ``"global"``.
      keep_probability: ``random_sparsification`` only: in (0, 1].
      rescale: ``random_sparsification`` only: divide kept entries by ``keep_probability``.
      bits: ``quantization`` only: bits per entry, in [1, 16].
      scaled: ``sign`` only: multiply signs by the tensor's mean magnitude.

    Raises:
      ValueError: on construction, if the parameter the kind needs is missing or out of
        range, or a parameter of another kind is set; the message names the field.

    **Formal guarantees**

    - Bound: none; compression is a heuristic defense, measured, never accounted.
    """

    kind: str
    keep_fraction: float | None = None
    scope: str = "per_tensor"
    keep_probability: float | None = None
    rescale: bool = True
    bits: int | None = None
    scaled: bool = True

    def __post_init__(self):
        _validation.check_choice(self.kind, "kind", KINDS)
        _validation.check_choice(self.scope, "scope", SCOPES)
        for kind, name in _PARAMETER_OF_KIND.items():
            value = getattr(self, name)
            if kind != self.kind:
                if value is not None:
                    raise ValueError(f"{name} must be None for kind={self.kind!r} (it belongs to kind={kind!r}), "
                                     f"got {value!r}")
                continue
            checked = _check_bits(value) if name == "bits" else _check_fraction(value, name)
            object.__setattr__(self, name, checked)
        for name in ("rescale", "scaled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def transform(self, key: PRNGKey | None = None) -> optax.GradientTransformation:
        """The transform; ``key`` is required for the random kinds and ignored otherwise."""
        if self.kind == "top_k":
            return top_k_sparsification(self.keep_fraction, scope=self.scope)
        if self.kind == "sign":
            return sign_compression(scaled=self.scaled)
        if key is None:
            raise ValueError(f"key must be a JAX PRNG key for kind={self.kind!r} (a random compression), got None")
        if self.kind == "random_sparsification":
            return random_sparsification(self.keep_probability, key, rescale=self.rescale)
        return stochastic_quantization(self.bits, key)

    def compressed_bytes(self, params: Params) -> float:
        """Bytes one client sends for an update shaped like ``params``.

        - ``top_k``: ``k`` values at the leaves' dtype size + ``k`` int32 indices, with ``k``
          per tensor or over the whole update;
        - ``random_sparsification``: the EXPECTED count ``p * n`` of values + int32 indices
          (the realised count is random);
        - ``quantization``: ``ceil(n * bits / 8)`` per tensor + one float32 scale;
        - ``sign``: ``ceil(n / 8)`` per tensor + one float32 scale when ``scaled``.

        Entropy coding of indices or levels (as in QSGD's Elias coding) would send fewer;
        these are the plain fixed-width encodings.
        """
        leaves = jax.tree_util.tree_leaves(params)
        sizes = [int(leaf.size) for leaf in leaves]
        itemsizes = [jnp.dtype(leaf.dtype).itemsize for leaf in leaves]
        if self.kind == "top_k":
            if self.scope == "global":
                total = sum(sizes)
                if total == 0:
                    return 0.0
                itemsize = jnp.dtype(jnp.result_type(*leaves)).itemsize
                return float(kept_count(self.keep_fraction, total) * (itemsize + INDEX_BYTES))
            return float(sum(kept_count(self.keep_fraction, n) * (itemsize + INDEX_BYTES)
                             for n, itemsize in zip(sizes, itemsizes) if n))
        if self.kind == "random_sparsification":
            return float(sum(self.keep_probability * n * (itemsize + INDEX_BYTES)
                             for n, itemsize in zip(sizes, itemsizes)))
        bits = self.bits if self.kind == "quantization" else 1
        scale_bytes = SCALE_BYTES if (self.kind == "quantization" or self.scaled) else 0
        return float(sum(math.ceil(n * bits / 8) + scale_bytes for n in sizes))
