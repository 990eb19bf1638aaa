"""Fixed-point encoding of float vectors into ``Z_{2^32}`` for secure aggregation.

A value ``x`` is clipped to ``[-clip_range, clip_range]``, scaled by ``scale`` and
rounded to the nearest integer code ``q`` with ``|q| <= floor(clip_range * scale)``;
``q`` is stored as a ``uint32`` modulo ``2^32`` (two's complement). Sums of codes are
taken modulo ``2^32`` (``uint32`` arithmetic wraps), and a sum of ``n`` codes decodes
exactly as a signed integer as long as ``n * floor(clip_range * scale) < 2^31``, which
:func:`check_no_overflow` enforces.

All functions are pure ``jax.numpy`` and jittable (``clip_range`` and ``scale`` are
Python numbers closed over or static).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedpriv.typing import Array

MODULUS = 1 << 32
MAX_SIGNED = (1 << 31) - 1


def max_code(clip_range: float, scale: float) -> int:
    """Largest absolute integer code of one encoded value: ``floor(clip_range * scale)``."""
    return int(math.floor(clip_range * scale))


def check_no_overflow(num_clients: int, clip_range: float, scale: float) -> int:
    """Checks that the sum of ``num_clients`` encoded vectors decodes without wrapping.

    Args:
      num_clients: how many encoded vectors are summed.
      clip_range: values are clipped to ``[-clip_range, clip_range]``.
      scale: codes per unit (quantisation step ``1 / scale``).

    Returns:
      The largest ``fixed_point_scale`` that would still be safe for these settings.

    Raises:
      ValueError: if a value would encode to code 0 only (``clip_range * scale < 1``) or
        if ``num_clients * floor(clip_range * scale) > 2^31 - 1``; the message names
        ``fixed_point_scale`` and the largest allowed value.
    """
    largest_scale = math.floor(MAX_SIGNED / num_clients) / clip_range
    code = max_code(clip_range, scale)
    if code < 1:
        raise ValueError(f"fixed_point_scale must satisfy clip_range * fixed_point_scale >= 1 so that "
                         f"values are not all encoded as 0, got fixed_point_scale={scale} with "
                         f"clip_range={clip_range}")
    if num_clients * code > MAX_SIGNED:
        raise ValueError(f"fixed_point_scale={scale} with clip_range={clip_range} lets the sum of "
                         f"{num_clients} clients overflow 32 bits ({num_clients} * {code} > 2^31 - 1); "
                         f"allowed: fixed_point_scale <= {largest_scale:.6g} (or a smaller clip_range)")
    return largest_scale


def encode(values: Array, clip_range: float, scale: float) -> Array:
    """Clips, scales and rounds ``values`` into ``uint32`` codes (two's complement).

    Args:
      values: a float array of any shape.
      clip_range: values are clipped to ``[-clip_range, clip_range]`` first.
      scale: codes per unit.

    Returns:
      ``uint32`` array of the shape of ``values``; ``q mod 2^32`` with
      ``q = round(clip(values) * scale)`` (half to even), ``|q| <= max_code``.
      NaN encodes to an unspecified code: callers reject non-finite inputs first.
    """
    values = jnp.asarray(values, jnp.float32)
    bound = max_code(clip_range, scale)
    codes = jnp.round(jnp.clip(values, -clip_range, clip_range) * jnp.float32(scale))
    # A second clip in the code domain: float rounding of clip_range * scale must not push
    # a code past the bound that the overflow check relies on.
    codes = jnp.clip(codes, -bound, bound).astype(jnp.int32)
    return jax.lax.bitcast_convert_type(codes, jnp.uint32)


def decode(codes: Array, scale: float) -> Array:
    """Reads ``uint32`` codes (a single vector or a sum) as signed fixed point, in float32.

    Args:
      codes: ``uint32`` array, e.g. a sum of encoded vectors modulo ``2^32``.
      scale: the scale used to encode.

    Returns:
      float32 array ``signed(codes) / scale``; exact up to one float32 rounding when
      ``scale`` is a power of two (otherwise within a few float32 ulps).
    """
    signed = jax.lax.bitcast_convert_type(jnp.asarray(codes, jnp.uint32), jnp.int32)
    # Splitting into high and low 16 bits keeps both parts exact in float32, so the only
    # rounding is the final one; int32 -> float32 directly would lose up to 7 bits.
    high = jnp.right_shift(signed, 16).astype(jnp.float32)
    low = jnp.bitwise_and(signed, 0xFFFF).astype(jnp.float32)
    return high * jnp.float32(65536.0 / scale) + low / jnp.float32(scale)


def sum_codes(codes: Array, axis: int = 0) -> Array:
    """Sum of ``uint32`` codes modulo ``2^32`` along ``axis``."""
    return jnp.sum(jnp.asarray(codes, jnp.uint32), axis=axis, dtype=jnp.uint32)
