"""Aggregation under CKKS homomorphic encryption, with TenSEAL (DESIGN §4).

Three roles, three objects, and only bytes travel between them:

- :class:`KeyHolder` makes the CKKS keys, hands out a PUBLIC context (no secret key)
  and decrypts the one ciphertext it is given: the encrypted sum.
- :class:`HEClient` (one per hospital) encrypts its update, already clipped and noised
  by its DP plan, in chunks of ``poly_modulus_degree / 2`` slots.
- :class:`Aggregator` (the server) holds only the public context and adds ciphertexts.
  It cannot decrypt: TenSEAL refuses without the secret key, and the constructor refuses
  a context that holds one.

:func:`encrypted_sum` runs the protocol end to end for updates ``[C, D]`` and measures
what it costs (bytes, seconds) and how exact it is; :func:`encrypted_tree_sum` does the
same for a pytree whose leaves are ``[C, ...]``, so the training loop can call it in place
of a plaintext sum.

TenSEAL is an optional dependency: it is imported inside the functions that need it, so
``fedpriv`` imports without it. Encryption draws its randomness from SEAL's own CSPRNG on
purpose (a ciphertext whose randomness followed an experiment seed would not be secure),
so the decrypted sum varies between runs by about the CKKS error (``max_abs_error``),
not bit for bit.

Ciphertexts are large. A fresh ciphertext holds two polynomials with one 8-byte word per
coefficient and per data prime (all primes but the last, special one), i.e. about
``32 * (len(coeff_mod_bit_sizes) - 1)`` bytes per slot before compression, against 4 bytes
per float32. Addition needs no rescaling, so an aggregation-only set such as ``(60, 60)``
is enough for clipped updates and is about 2.5 times smaller than ``(60, 40, 40, 60)``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.flatten_util
import numpy as np

from fedpriv.typing import Params

# 128-bit classical security bound on the total coefficient-modulus bits per polynomial
# degree: HomomorphicEncryption.org standard (Albrecht et al. 2018), as enforced by SEAL's
# CoeffModulus::MaxBitCount.
MAX_COEFF_MODULUS_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# SEAL accepts primes of at most 60 bits; very small ones rarely exist for large degrees
# (they must be 1 mod 2N), which TenSEAL reports at context creation.
MAX_PRIME_BITS = 60
MIN_PRIME_BITS = 2


def _tenseal():
    try:
        import tenseal
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("homomorphic aggregation needs TenSEAL: pip install tenseal") from error
    return tenseal


@dataclasses.dataclass(frozen=True, kw_only=True)
class CKKSConfig:
    """CKKS parameters of the aggregation.

    Attributes:
      poly_modulus_degree: ring degree ``N``, a power of two in [1024, 32768]; a ciphertext
        holds ``N / 2`` values.
      coeff_mod_bit_sizes: bit sizes of the coefficient-modulus primes, each in [2, 60],
        at least two (the last is the special key-switching prime); their total must stay
        within the 128-bit security bound for ``N`` (:data:`MAX_COEFF_MODULUS_BITS`, e.g.
        218 bits for 8192).
      global_scale: CKKS encoding scale ``Delta > 1``; precision is about ``1 / Delta``
        times the encryption noise, and ``log2(Delta)`` must stay below the bits of the
        data primes (all but the last) so values fit.

    Raises:
      ValueError: on construction, if a field is outside its allowed range; the message
        names the field, the value and what is allowed. A parameter set that passes here
        but that SEAL still rejects (e.g. no primes of a requested size) is turned into a
        ``ValueError`` when the :class:`KeyHolder` builds the context.

    **Formal guarantees**

    - Bound: within :data:`MAX_COEFF_MODULUS_BITS`, RLWE-based CKKS is estimated at 128-bit
      security against known attacks (IND-CPA).
    - Not protected: IND-CPA-D, i.e. the decrypted result being released: see
      :class:`KeyHolder`.

    References:
      Cheon, Kim, Kim, Song 2017, "Homomorphic Encryption for Arithmetic of Approximate
      Numbers", ASIACRYPT 2017, IACR ePrint 2016/421.
      Albrecht et al. 2018, "Homomorphic Encryption Security Standard",
      HomomorphicEncryption.org.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    global_scale: float = 2.0**40

    def __post_init__(self):
        degree = self.poly_modulus_degree
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or int(degree) not in \
                MAX_COEFF_MODULUS_BITS:
            raise ValueError(f"poly_modulus_degree must be a power of two in [1024, 32768] "
                             f"({tuple(MAX_COEFF_MODULUS_BITS)}), got {degree!r}")
        object.__setattr__(self, "poly_modulus_degree", int(degree))
        bits = self.coeff_mod_bit_sizes
        if isinstance(bits, (str, bytes)) or not isinstance(bits, Sequence) or len(bits) < 2 or any(
                isinstance(b, bool) or not isinstance(b, numbers.Integral)
                or not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS for b in bits):
            raise ValueError(f"coeff_mod_bit_sizes must be a sequence of at least two integers in "
                             f"[{MIN_PRIME_BITS}, {MAX_PRIME_BITS}] (data primes, then the special prime), "
                             f"got {bits!r}")
        bits = tuple(int(b) for b in bits)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        bound = MAX_COEFF_MODULUS_BITS[self.poly_modulus_degree]
        if sum(bits) > bound:
            raise ValueError(f"coeff_mod_bit_sizes {bits} total {sum(bits)} bits, above the 128-bit security bound "
                             f"of {bound} bits for poly_modulus_degree {self.poly_modulus_degree}; allowed: a total "
                             f"<= {bound} (or a larger poly_modulus_degree)")
        scale = self.global_scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 1:
            raise ValueError(f"global_scale must be a finite number > 1 (e.g. 2**40), got {scale!r}")
        object.__setattr__(self, "global_scale", float(scale))
        if math.log2(self.global_scale) >= self.data_bits:
            raise ValueError(f"global_scale 2**{math.log2(self.global_scale):g} leaves no room for values: allowed is "
                             f"log2(global_scale) < {self.data_bits}, the bits of the data primes "
                             f"{bits[:-1]} of coeff_mod_bit_sizes")

    @property
    def slot_count(self) -> int:
        """Values per ciphertext: ``poly_modulus_degree / 2``."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives in (every prime but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_abs_value(self) -> float:
        """Largest magnitude a decrypted slot can hold: half the data modulus over the scale.

        Past it CKKS wraps around silently, so sums are checked against it before encryption.
        """
        return 2.0 ** (self.data_bits - 1) / self.global_scale

    def describe(self) -> str:
        """The parameter set in one line, for error messages and reports."""
        return (f"CKKS(poly_modulus_degree={self.poly_modulus_degree}, "
                f"coeff_mod_bit_sizes={self.coeff_mod_bit_sizes}, global_scale=2**{math.log2(self.global_scale):g})")


@dataclasses.dataclass(frozen=True)
class EncryptedUpdate:
    """One party's encrypted vector as it travels: serialized CKKS chunks and the length.

    Attributes:
      chunks: serialized ciphertexts, each of at most ``slot_count`` values.
      size: the vector length ``D`` (the last chunk is zero-padded in its unused slots).
    """

    chunks: tuple[bytes, ...]
    size: int

    @property
    def num_bytes(self) -> int:
        """Bytes on the wire (the serialized ciphertexts)."""
        return sum(len(chunk) for chunk in self.chunks)


class KeyHolder:
    """Holds the CKKS secret key; publishes a public context; decrypts only what it is given.

    Args:
      config: the CKKS parameters.

    Raises:
      ValueError: if SEAL rejects the parameter set (message names it and what is allowed).

    **Formal guarantees**

    - Bound: none on its own (HE is not DP). If the key holder decrypts only the aggregate,
      neither it nor the aggregator learns more than the sum of the updates.
    - Not protected: a key holder that colludes with the aggregator, or decrypts whatever
      it is sent (a malicious server could send it one client's ciphertext): it must check
      what it decrypts. The released sum itself, which reveals as much as any sum (only the
      clients' DP noise protects it). Releasing exact CKKS decryptions can leak the secret
      key to an attacker who chose the inputs (Li, Micciancio 2021, IND-CPA-D).

    References:
      Li, Micciancio 2021, "On the Security of Homomorphic Encryption on Approximate
      Numbers", EUROCRYPT 2021, IACR ePrint 2020/1533.
    """

    def __init__(self, config: CKKSConfig):
        if not isinstance(config, CKKSConfig):
            raise ValueError(f"config must be a CKKSConfig, got {type(config).__name__}")
        ts = _tenseal()
        self._config = config
        try:
            context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=config.poly_modulus_degree,
                                 coeff_mod_bit_sizes=list(config.coeff_mod_bit_sizes))
            context.global_scale = config.global_scale
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"SEAL rejects the parameter set {config.describe()}: {error}. Allowed: "
                             f"poly_modulus_degree a power of two in [1024, 32768]; coeff_mod_bit_sizes at least two "
                             f"primes of <= 60 bits that exist as primes = 1 mod 2*poly_modulus_degree "
                             f"(small sizes often have none), "
                             f"total <= {MAX_COEFF_MODULUS_BITS[config.poly_modulus_degree]} bits") from error
        self._context = context
        public = context.copy()
        public.make_context_public()
        self._public_context = public.serialize()

    @property
    def config(self) -> CKKSConfig:
        return self._config

    @property
    def public_context(self) -> bytes:
        """The serialized context without the secret key, for clients and the aggregator."""
        return self._public_context

    def decrypt(self, encrypted: EncryptedUpdate) -> np.ndarray:
        """Decrypts ``encrypted`` (meant to be the aggregate) to a float64 vector ``[D]``."""
        ts = _tenseal()
        parts = [np.asarray(ts.ckks_vector_from(self._context, chunk).decrypt(), np.float64)
                 for chunk in encrypted.chunks]
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.shape != (encrypted.size,):
            raise ValueError(f"encrypted.size is {encrypted.size} but the chunks hold {values.shape[0]} values")
        return values


def _public_context(public_context: bytes, role: str):
    ts = _tenseal()
    if not isinstance(public_context, (bytes, bytearray)):
        raise ValueError(f"public_context must be the bytes of KeyHolder.public_context, got "
                         f"{type(public_context).__name__}")
    context = ts.context_from(bytes(public_context))
    if context.is_private():
        raise ValueError(f"public_context holds the secret key; the {role} must get a context without it "
                         f"(KeyHolder.public_context)")
    return context


class HEClient:
    """A hospital that encrypts its (clipped, noised) update under the public context.

    Args:
      config: the public CKKS parameters (they fix the chunk size, ``slot_count``).
      public_context: :attr:`KeyHolder.public_context`.

    Raises:
      ValueError: if the context holds the secret key or is not a context.

    **Formal guarantees**

    - Bound: the ciphertexts are IND-CPA under RLWE for parameters within the security
      bound; only the key holder can read them. No DP: the client must clip and noise the
      update (its DP plan) before encrypting.
    - Not protected: the update's length and the client's participation (visible to the
      aggregator).
    """

    def __init__(self, config: CKKSConfig, public_context: bytes):
        if not isinstance(config, CKKSConfig):
            raise ValueError(f"config must be a CKKSConfig, got {type(config).__name__}")
        self._slot_count = config.slot_count
        self._context = _public_context(public_context, "client")

    def encrypt(self, update: np.ndarray) -> EncryptedUpdate:
        """Encrypts a vector ``[D]`` in chunks of ``slot_count`` values (the last one partial).

        Args:
          update: the client's flat update, float, shape ``[D]``, finite.

        Returns:
          An :class:`EncryptedUpdate` of ``ceil(D / slot_count)`` ciphertexts.

        Raises:
          ValueError: if ``update`` is not a finite 1-D vector.
        """
        ts = _tenseal()
        values = np.asarray(update, np.float64)
        if values.ndim != 1 or not np.all(np.isfinite(values)):
            raise ValueError(f"update must be a finite vector [D], got shape {values.shape}")
        chunks = tuple(ts.ckks_vector(self._context, values[start:start + self._slot_count]).serialize()
                       for start in range(0, values.shape[0], self._slot_count))
        return EncryptedUpdate(chunks=chunks, size=int(values.shape[0]))


class Aggregator:
    """The server: adds encrypted updates under the public context, and cannot decrypt.

    Args:
      public_context: :attr:`KeyHolder.public_context`.

    Raises:
      ValueError: if the context holds the secret key.

    **Formal guarantees**

    - Bound: what the aggregator sees (ciphertexts, their sizes and senders) is
      computationally independent of the updates' values (IND-CPA).
    - Not protected: the decrypted sum once released; collusion with the key holder.
    """

    def __init__(self, public_context: bytes):
        self._context = _public_context(public_context, "aggregator")

    @property
    def context(self):
        """The TenSEAL context the aggregator works with (public: no secret key)."""
        return self._context

    def add(self, encrypted: Sequence[EncryptedUpdate]) -> EncryptedUpdate:
        """The encrypted sum of ``encrypted`` (at least one), chunk by chunk.

        Raises:
          ValueError: if there is nothing to add or the updates differ in length.
        """
        ts = _tenseal()
        if not encrypted:
            raise ValueError("encrypted must hold at least one EncryptedUpdate, got none")
        sizes = {(item.size, len(item.chunks)) for item in encrypted}
        if len(sizes) != 1:
            raise ValueError(f"all encrypted updates must have the same size and chunking, got {sorted(sizes)}")
        summed = []
        for position in range(len(encrypted[0].chunks)):
            total = ts.ckks_vector_from(self._context, encrypted[0].chunks[position])
            for item in encrypted[1:]:
                total.add_(ts.ckks_vector_from(self._context, item.chunks[position]))
            summed.append(total.serialize())
        return EncryptedUpdate(chunks=tuple(summed), size=encrypted[0].size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HEReport:
    """What one encrypted aggregation cost and how exact it was.

    Attributes:
      num_clients: ``C``.
      dimension: ``D``.
      ciphertexts_per_client: ``ceil(D / slot_count)``.
      bytes_per_client: serialized ciphertexts one client sends (mean over clients).
      plaintext_bytes_per_client: the same update as float32, ``4 * D``.
      public_context_bytes: the serialized public context, sent once to every party.
      encrypt_seconds: all clients' encryption + serialization (sequential; per client
        divide by ``num_clients``).
      add_seconds: the aggregator's deserialization + additions + serialization.
      decrypt_seconds: the key holder's deserialization + decryption.
      max_abs_error: ``max |decrypted sum - float64 sum|`` over the ``D`` coordinates.
      parameters: :meth:`CKKSConfig.describe`.
    """

    num_clients: int
    dimension: int
    ciphertexts_per_client: int
    bytes_per_client: float
    plaintext_bytes_per_client: int
    public_context_bytes: int
    encrypt_seconds: float
    add_seconds: float
    decrypt_seconds: float
    max_abs_error: float
    parameters: str

    @property
    def expansion(self) -> float:
        """``bytes_per_client / plaintext_bytes_per_client``."""
        return self.bytes_per_client / self.plaintext_bytes_per_client

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-able ``{"he.<field>": value}`` for ``metrics.json``."""
        flat = {f"he.{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}
        flat["he.expansion"] = self.expansion
        return flat


def encrypted_sum(updates: np.ndarray, config: CKKSConfig) -> tuple[np.ndarray, HEReport]:
    """The sum over clients of ``updates [C, D]``, computed under CKKS, with its costs.

    Runs the whole protocol on the host: the key holder makes keys, every client encrypts
    its row, the aggregator adds the ciphertexts with the public context only, and the key
    holder decrypts the sum. Use it in place of a plaintext sum over the participating
    clients' (clipped, noised) updates; divide by a public constant afterwards.

    Args:
      updates: ``[C, D]`` float, finite, one row per participating client (``C >= 1``).
      config: the CKKS parameters.

    Returns:
      ``(sum [D] float64, HEReport)``.

    Raises:
      ValueError: before any encryption, if ``updates`` is not a finite ``[C, D]`` array,
        if ``C * max|updates|`` could exceed :attr:`CKKSConfig.max_abs_value`, or if SEAL
        rejects the parameter set.

    **Formal guarantees**

    - Bound: the server observes ciphertexts only (IND-CPA under RLWE); the only value
      released is the sum, correct to ``max_abs_error``. The DP guarantee, if any, is the
      clients' (their plan's event); HE neither adds nor removes privacy of the sum.
    - Unit: not applicable (confidentiality of each client's update, not DP).
    - Not protected: the sum; who took part; collusion of key holder and server; the
      IND-CPA-D attack on released CKKS decryptions (see :class:`KeyHolder`).

    Example:
      >>> config = CKKSConfig(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49))
      >>> total, report = encrypted_sum(np.ones((3, 2049)), config)
      >>> report.ciphertexts_per_client, bool(np.allclose(total, 3.0, atol=1e-6))
      (2, True)

    References:
      Cheon, Kim, Kim, Song 2017, IACR ePrint 2016/421 (CKKS).
      Benaissa et al. 2021, "TenSEAL: A Library for Encrypted Tensor Operations Using
      Homomorphic Encryption", arXiv 2104.03152.
    """
    if not isinstance(config, CKKSConfig):
        raise ValueError(f"config must be a CKKSConfig, got {type(config).__name__}")
    values = np.asarray(updates, np.float64)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"updates must be a finite array [C, D] with C >= 1 and D >= 1, got shape {values.shape}")
    num_clients, dimension = values.shape
    bound = num_clients * float(np.max(np.abs(values)))
    if bound >= config.max_abs_value:
        raise ValueError(f"updates too large for {config.describe()}: C * max|updates| = {bound:g} must stay below "
                         f"{config.max_abs_value:g}; lower global_scale or add data primes")

    key_holder = KeyHolder(config)
    clients = [HEClient(config, key_holder.public_context) for _ in range(num_clients)]
    aggregator = Aggregator(key_holder.public_context)

    start = time.perf_counter()
    encrypted = [client.encrypt(row) for client, row in zip(clients, values)]
    encrypt_seconds = time.perf_counter() - start
    start = time.perf_counter()
    encrypted_total = aggregator.add(encrypted)
    add_seconds = time.perf_counter() - start
    start = time.perf_counter()
    total = key_holder.decrypt(encrypted_total)
    decrypt_seconds = time.perf_counter() - start

    exact = np.sum(values, axis=0)
    report = HEReport(
        num_clients=num_clients,
        dimension=dimension,
        ciphertexts_per_client=len(encrypted[0].chunks),
        bytes_per_client=float(np.mean([item.num_bytes for item in encrypted])),
        plaintext_bytes_per_client=4 * dimension,
        public_context_bytes=len(key_holder.public_context),
        encrypt_seconds=encrypt_seconds,
        add_seconds=add_seconds,
        decrypt_seconds=decrypt_seconds,
        max_abs_error=float(np.max(np.abs(total - exact))),
        parameters=config.describe(),
    )
    return total, report


def encrypted_tree_sum(updates: Params, config: CKKSConfig) -> tuple[Params, HEReport]:
    """:func:`encrypted_sum` for a pytree of per-client updates (leaves ``[C, ...]``).

    Each client's update is flattened with ``jax.flatten_util.ravel_pytree``; the sum is
    unflattened to the structure, shapes and dtypes of one client's update.

    Args:
      updates: a pytree whose leaves share a leading client axis ``C``.
      config: the CKKS parameters.

    Returns:
      ``(sum pytree without the client axis, HEReport)``.

    Raises:
      ValueError: as for :func:`encrypted_sum`, or if the leaves disagree on ``C``.

    **Formal guarantees**

    - As for :func:`encrypted_sum`.
    """
    leaves = jax.tree_util.tree_leaves(updates)
    counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if not leaves or len(counts) != 1 or None in counts:
        raise ValueError(f"updates must be a non-empty pytree whose leaves share a leading client axis, "
                         f"got leading sizes {sorted(counts, key=str)}")
    _, unravel = jax.flatten_util.ravel_pytree(jax.tree_util.tree_map(lambda leaf: leaf[0], updates))
    rows = jax.vmap(lambda update: jax.flatten_util.ravel_pytree(update)[0])(updates)
    total, report = encrypted_sum(np.asarray(rows, np.float64), config)
    return unravel(jax.numpy.asarray(total)), report
