"""Shamir t-of-n secret sharing over a prime field, for byte strings of any length.

A secret ``s`` in the field ``Z_p`` is hidden as the constant term of a random
polynomial ``f`` of degree ``t - 1``; party ``x`` (a non-zero field element) gets
``f(x)``. Any ``t`` shares determine ``f`` and so ``f(0) = s`` by Lagrange
interpolation; any ``t - 1`` shares are consistent with every secret in equal measure.

Byte strings (32-byte seeds and X25519 private keys in secure aggregation) are split
into chunks of ``chunk_bytes(prime)`` bytes, each a field element strictly below ``p``,
and every chunk is shared with its own independent polynomial at the same points.

Polynomial coefficients come from the operating system's CSPRNG (:mod:`secrets`), not
from a JAX key or a NumPy generator: those are seeded, so shares drawn from them would
be predictable by whoever knows the seed, which breaks the hiding property. Nothing
downstream depends on the coefficients (reconstruction is exact), so runs stay
reproducible.

Arithmetic is on Python integers: the field is wider than any machine word, and the
work (a few hundred evaluations of small polynomials per protocol run) is negligible.
"""

from __future__ import annotations

import dataclasses
import numbers
import secrets
from collections.abc import Sequence

# 2^127 - 1 is a Mersenne prime: 16-byte field elements, 15-byte chunks.
MERSENNE_127 = (1 << 127) - 1


def chunk_bytes(prime: int = MERSENNE_127) -> int:
    """Largest number of bytes whose every value is a field element (``256^k <= p``)."""
    return (prime.bit_length() - 1) // 8


def element_bytes(prime: int = MERSENNE_127) -> int:
    """Bytes needed to write one field element."""
    return (prime.bit_length() + 7) // 8


@dataclasses.dataclass(frozen=True)
class Share:
    """One party's share of a (possibly multi-chunk) secret.

    Attributes:
      x: the party's evaluation point, a non-zero field element.
      values: ``f_k(x)`` for every chunk ``k`` of the secret.
    """

    x: int
    values: tuple[int, ...]

    def num_bytes(self, prime: int = MERSENNE_127) -> int:
        """Size on the wire: the values only (``x`` is the sender's id, sent anyway)."""
        return len(self.values) * element_bytes(prime)

    def to_bytes(self, prime: int = MERSENNE_127) -> bytes:
        width = element_bytes(prime)
        return b"".join(value.to_bytes(width, "big") for value in self.values)

    @classmethod
    def from_bytes(cls, x: int, data: bytes, prime: int = MERSENNE_127) -> "Share":
        width = element_bytes(prime)
        if len(data) % width:
            raise ValueError(f"share data must be a multiple of {width} bytes, got {len(data)}")
        values = tuple(int.from_bytes(data[i:i + width], "big") for i in range(0, len(data), width))
        if any(value >= prime for value in values):
            raise ValueError("share data holds a value outside the field")
        return cls(x=x, values=values)


def _check_threshold(threshold: object, num_points: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Integral):
        raise ValueError(f"threshold must be an integer, got {threshold!r}")
    if not 1 <= threshold <= num_points:
        raise ValueError(f"threshold must satisfy 1 <= threshold <= number of shares ({num_points}), "
                         f"got {threshold}")
    return int(threshold)


def _check_points(xs: Sequence[int], prime: int) -> tuple[int, ...]:
    xs = tuple(int(x) for x in xs)
    if len(set(xs)) != len(xs):
        raise ValueError(f"evaluation points must be distinct, got {xs}")
    if any(not 0 < x < prime for x in xs):
        raise ValueError(f"evaluation points must be non-zero field elements (0 < x < {prime}), got {xs}")
    return xs


def evaluate_polynomial(coefficients: Sequence[int], x: int, prime: int = MERSENNE_127) -> int:
    """``sum_k coefficients[k] * x^k mod prime`` by Horner's rule."""
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % prime
    return result


def interpolate_at_zero(points: Sequence[tuple[int, int]], prime: int = MERSENNE_127) -> int:
    """Value at 0 of the unique polynomial of degree ``< len(points)`` through ``points``.

    Args:
      points: ``(x, y)`` pairs with distinct non-zero ``x``.
      prime: the field modulus.

    Returns:
      ``f(0) mod prime``.

    Raises:
      ValueError: if there are no points or the ``x`` are not distinct and non-zero.
    """
    if not points:
        raise ValueError("interpolation needs at least one point, got none")
    xs = _check_points([x for x, _ in points], prime)
    total = 0
    for i, (x_i, y_i) in enumerate(points):
        # Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i).
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % prime
                denominator = denominator * (x_j - x_i) % prime
        total = (total + y_i * numerator * pow(denominator, -1, prime)) % prime
    return total


def share_element(secret: int, threshold: int, xs: Sequence[int], prime: int = MERSENNE_127) -> list[int]:
    """Shares one field element t-of-n: ``f(x)`` for each ``x`` in ``xs``.

    Args:
      secret: the field element ``0 <= secret < prime``.
      threshold: ``t``, the number of shares that reconstruct; ``1 <= t <= len(xs)``.
      xs: distinct non-zero evaluation points, one per party.
      prime: the field modulus.

    Returns:
      The share values, in the order of ``xs``.

    Raises:
      ValueError: if the secret is outside the field, ``threshold`` is out of range or the
        points are not distinct non-zero field elements.

    **Formal guarantees**

    - Bound: any ``t - 1`` shares are independent of ``secret`` (perfect secrecy: for
      every secret exactly one polynomial of degree ``t - 1`` matches them, and the
      coefficients are uniform), assuming :mod:`secrets` is a uniform source.
    - Not protected: ``t`` or more shares reveal the secret; the points and ``t`` are public.

    References:
      Shamir 1979, "How to Share a Secret", Communications of the ACM 22(11).
    """
    xs = _check_points(xs, prime)
    threshold = _check_threshold(threshold, len(xs))
    if not 0 <= secret < prime:
        raise ValueError(f"secret must be a field element in [0, {prime}), got {secret}")
    coefficients = [secret] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    return [evaluate_polynomial(coefficients, x, prime) for x in xs]


def share_bytes(secret: bytes, threshold: int, xs: Sequence[int], prime: int = MERSENNE_127) -> list[Share]:
    """Shares a byte string t-of-n, one independent polynomial per chunk.

    Args:
      secret: the bytes to share (e.g. a 32-byte key).
      threshold: ``t``, the number of shares that reconstruct; ``1 <= t <= len(xs)``.
      xs: distinct non-zero evaluation points, one per party.
      prime: the field modulus.

    Returns:
      One :class:`Share` per point, in the order of ``xs``.

    Raises:
      ValueError: as :func:`share_element`, or if ``secret`` is empty.

    **Formal guarantees**

    - Bound: any ``t - 1`` shares are independent of ``secret`` (each chunk is shared
      with its own fresh polynomial, so perfect secrecy holds chunk by chunk and jointly).
    - Not protected: the length of the secret is public.

    References:
      Shamir 1979, "How to Share a Secret", Communications of the ACM 22(11).
    """
    if not secret:
        raise ValueError("secret must be a non-empty byte string, got b''")
    width = chunk_bytes(prime)
    chunks = [int.from_bytes(secret[i:i + width], "big") for i in range(0, len(secret), width)]
    per_chunk = [share_element(chunk, threshold, xs, prime) for chunk in chunks]
    return [Share(x=int(x), values=tuple(values[party] for values in per_chunk)) for party, x in enumerate(xs)]


def reconstruct_bytes(shares: Sequence[Share], threshold: int, length: int, prime: int = MERSENNE_127) -> bytes:
    """Reconstructs a byte string of ``length`` bytes from at least ``threshold`` shares.

    Uses the first ``threshold`` shares (with honest parties any ``t`` agree).

    Args:
      shares: shares from distinct parties; at least ``threshold`` of them.
      threshold: ``t`` used when sharing.
      length: the length of the secret in bytes.
      prime: the field modulus.

    Returns:
      The secret.

    Raises:
      ValueError: with fewer than ``threshold`` shares, points that are not distinct,
        shares of different chunk counts, or a reconstruction that does not fit a chunk
        (a sign of inconsistent shares).
    """
    if len(shares) < threshold:
        raise ValueError(f"reconstruction needs at least threshold={threshold} shares, got {len(shares)}")
    used = list(shares)[:threshold]
    width = chunk_bytes(prime)
    chunk_lengths = [min(width, length - i) for i in range(0, length, width)]
    if any(len(share.values) != len(chunk_lengths) for share in used):
        raise ValueError(f"every share must hold {len(chunk_lengths)} chunk values for a {length}-byte secret")
    out = bytearray()
    for k, chunk_length in enumerate(chunk_lengths):
        value = interpolate_at_zero([(share.x, share.values[k]) for share in used], prime)
        if value >= 1 << (8 * chunk_length):
            raise ValueError("shares are inconsistent: a reconstructed chunk does not fit its length")
        out += value.to_bytes(chunk_length, "big")
    return bytes(out)
