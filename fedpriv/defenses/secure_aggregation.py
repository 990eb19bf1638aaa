"""Secure aggregation (Bonawitz et al. 2017) as a real host-side protocol (DESIGN §4).

The server learns the sum of the hospitals' clipped, fixed-point encoded updates and
nothing else about any one of them, even when some hospitals drop out mid-round.
Every party is an object and every message is plain data, so what each side holds is
visible in the code: :class:`SecureAggregationServer` only ever stores public keys,
relayed ciphertexts, masked vectors and the shares the protocol hands it;
:class:`SecureAggregationClient` keeps its secret keys and its update to itself.

Rounds (the semi-honest version of the paper, without signatures or consistency check):

0. AdvertiseKeys: each client sends two X25519 public keys, ``c`` (to encrypt shares)
   and ``s`` (to agree pairwise masks). The server broadcasts the list (set ``U1``).
1. ShareKeys: each client draws a self-mask seed ``b_u``, Shamir-shares ``b_u`` and its
   mask secret key ``s_u`` t-of-n, and encrypts each share for its recipient with
   AES-256-GCM under ``HKDF(X25519(c_u, c_v))``. The server relays ciphertexts (``U2``).
2. MaskedInputCollection: each client sends
   ``y_u = x_u + PRF(b_u) + sum_{v > u} PRF(s_uv) - sum_{v < u} PRF(s_uv)  (mod 2^32)``
   over ``v`` in ``U2``, with ``s_uv = HKDF(X25519(s_u, s_v))`` and the PRF an AES-CTR or
   ChaCha20 keystream. Pairwise masks cancel in the sum (``U3`` = who sent).
3. Unmasking: each client of ``U3`` sends its shares of ``b_v`` for ``v`` in ``U3`` and of
   ``s_v`` for ``v`` in ``U2 \\ U3`` (never both for one ``v``). The server reconstructs
   them, removes the self masks and the dropped clients' pairwise masks, and is left with
   ``sum_{u in U3} x_u mod 2^32``. Fewer than ``t`` responses in any round abort.

Key material comes from the operating system's CSPRNG (``X25519PrivateKey.generate``,
:mod:`secrets`), not from a JAX key: a seeded key is predictable by whoever knows the
seed, and the result does not depend on the masks (they cancel exactly), so runs stay
bit-reproducible. The JAX ``key`` of :func:`secure_sum` only draws simulated dropouts.

References:
  Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
  Learning", CCS, arXiv 1611.04482.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers import modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.defenses import fixed_point
from fedpriv.defenses import shamir
from fedpriv.privacy import _validation
from fedpriv.typing import Params, PRNGKey

PRFS = ("aes-ctr", "chacha20")
ROUNDS = ("advertise_keys", "share_keys", "masked_input_collection", "unmasking")
KEY_BYTES = 32
ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16


class SecureAggregationError(RuntimeError):
    """The protocol aborted: too few clients, or a message failed a check."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecureAggregationConfig:
    """Public parameters of one secure aggregation round.

    Attributes:
      num_clients: ``n``, the clients that start the round, ``>= 2``.
      threshold: ``t``, the Shamir threshold and the fewest clients that may answer any
        round; ``1 < t <= n``. Dropouts of up to ``n - t`` clients are tolerated.
      clip_range: every coordinate is clipped to ``[-clip_range, clip_range]`` before
        encoding, ``> 0``.
      fixed_point_scale: codes per unit (quantisation step ``1 / fixed_point_scale``);
        ``num_clients * floor(clip_range * fixed_point_scale)`` must stay below ``2^31``
        so the sum cannot wrap.
      prf: the mask PRF, ``"aes-ctr"`` (AES-256-CTR) or ``"chacha20"``.
      chunk_size: keystream entries generated per call, ``>= 1``; bounds memory, never
        changes the masks.
      dropout_rate: simulated probability that a client drops after ShareKeys, in
        ``[0, 1)``; used only by :func:`secure_sum` when no explicit dropouts are given.

    Raises:
      ValueError: on construction, if a field is outside its allowed range; the message
        names the field, the value and what is allowed.
    """

    num_clients: int
    threshold: int
    clip_range: float = 1.0
    fixed_point_scale: float = float(1 << 20)
    prf: str = "aes-ctr"
    chunk_size: int = 1 << 16
    dropout_rate: float = 0.0

    def __post_init__(self):
        num_clients = _validation.check_steps(self.num_clients, "num_clients")
        if num_clients < 2:
            raise ValueError(f"num_clients must be an integer >= 2, got {num_clients}")
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Integral):
            raise ValueError(f"threshold must be an integer with 1 < threshold <= num_clients "
                             f"({num_clients}), got {threshold!r}")
        if not 1 < threshold <= num_clients:
            raise ValueError(f"threshold must satisfy 1 < threshold <= num_clients ({num_clients}), "
                             f"got {threshold}")
        clip_range = _validation.check_positive(self.clip_range, "clip_range")
        scale = _validation.check_positive(self.fixed_point_scale, "fixed_point_scale")
        fixed_point.check_no_overflow(num_clients, clip_range, scale)
        _validation.check_choice(self.prf, "prf", PRFS)
        chunk_size = _validation.check_steps(self.chunk_size, "chunk_size")
        dropout_rate = self.dropout_rate
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, numbers.Real) \
                or not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be a number in [0, 1), got {dropout_rate!r}")
        dropout_rate = float(dropout_rate)
        for name, value in dict(num_clients=num_clients, threshold=int(threshold), clip_range=clip_range,
                                fixed_point_scale=scale, chunk_size=chunk_size, dropout_rate=dropout_rate).items():
            object.__setattr__(self, name, value)


# --- Key derivation and the mask PRF -----------------------------------------------------

def _hkdf(secret: bytes, purpose: bytes, session_id: bytes) -> bytes:
    # The session id as salt makes masks and share keys fresh in every round, even if a
    # caller were to reuse key pairs (reused masks would leak differences of updates).
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=session_id,
                info=b"fedpriv/secure-aggregation/" + purpose).derive(secret)


def _raw_public(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(private_key: X25519PrivateKey) -> bytes:
    return private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())


def pairwise_mask_seed(own_mask_key: X25519PrivateKey, peer_mask_public_key: bytes, session_id: bytes) -> bytes:
    """The seed ``s_uv`` both ends of a pair derive: ``HKDF(X25519(s_u, s_v))``, symmetric in u, v."""
    shared = own_mask_key.exchange(X25519PublicKey.from_public_bytes(peer_mask_public_key))
    return _hkdf(shared, b"pairwise-mask", session_id)


def self_mask_seed(self_mask_secret: bytes, session_id: bytes) -> bytes:
    """The PRF key of the self mask, derived from the shared secret ``b_u``."""
    return _hkdf(self_mask_secret, b"self-mask", session_id)


def add_prf_mask(target: np.ndarray, seed: bytes, prf: str, chunk_size: int, *, subtract: bool = False) -> None:
    """Adds (or subtracts) ``PRF(seed)`` to a ``uint32`` vector in place, modulo ``2^32``.

    The PRF output is the keystream of AES-256-CTR (zero IV) or ChaCha20 (zero nonce)
    under ``seed``, read as little-endian ``uint32`` words. Every seed is a fresh HKDF
    output used for one vector, so the fixed IV never repeats under one key.

    Args:
      target: 1-D ``uint32`` array, modified in place.
      seed: 32-byte PRF key.
      prf: ``"aes-ctr"`` or ``"chacha20"``.
      chunk_size: words generated per call; the keystream is the same for every value.
      subtract: subtract the mask instead of adding it.
    """
    if target.dtype != np.uint32 or target.ndim != 1:
        raise ValueError(f"target must be a 1-D uint32 array, got {target.dtype} of shape {target.shape}")
    if prf == "aes-ctr":
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    elif prf == "chacha20":
        encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    else:
        raise ValueError(f"prf must be one of {PRFS}, got {prf!r}")
    zeros = memoryview(bytes(4 * min(chunk_size, target.size)))
    for start in range(0, target.size, chunk_size):
        stop = min(start + chunk_size, target.size)
        words = np.frombuffer(encryptor.update(zeros[:4 * (stop - start)]), dtype="<u4")
        if subtract:
            target[start:stop] -= words
        else:
            target[start:stop] += words


def prf_mask(seed: bytes, length: int, prf: str = "aes-ctr", chunk_size: int = 1 << 16) -> np.ndarray:
    """``PRF(seed)`` as a fresh ``uint32`` vector of ``length`` words."""
    mask = np.zeros(length, np.uint32)
    add_prf_mask(mask, seed, prf, chunk_size)
    return mask


# --- Messages (plain data; num_bytes is the size on the wire) ------------------------------

@dataclasses.dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client to server: the two X25519 public keys of ``sender``."""

    sender: int
    encryption_public_key: bytes
    mask_public_key: bytes

    @property
    def num_bytes(self) -> int:
        return ID_BYTES + len(self.encryption_public_key) + len(self.mask_public_key)


@dataclasses.dataclass(frozen=True)
class EncryptedShare:
    """Round 1: ``sender``'s shares of ``b`` and ``s`` for ``recipient``, AES-GCM sealed."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes

    @property
    def num_bytes(self) -> int:
        return 2 * ID_BYTES + len(self.nonce) + len(self.ciphertext)


@dataclasses.dataclass(frozen=True)
class ShareKeys:
    """Round 1, client to server: one :class:`EncryptedShare` per other client of ``U1``."""

    sender: int
    encrypted_shares: tuple[EncryptedShare, ...]

    @property
    def num_bytes(self) -> int:
        return ID_BYTES + sum(share.num_bytes for share in self.encrypted_shares)


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, client to server: the masked ``uint32`` vector ``y_u``."""

    sender: int
    masked: np.ndarray

    @property
    def num_bytes(self) -> int:
        return ID_BYTES + self.masked.nbytes


@dataclasses.dataclass(frozen=True)
class UnmaskingShares:
    """Round 3, client to server: shares of ``b_v`` (survivors) and ``s_v`` (dropped)."""

    sender: int
    self_mask_shares: tuple[tuple[int, shamir.Share], ...]
    mask_key_shares: tuple[tuple[int, shamir.Share], ...]

    @property
    def num_bytes(self) -> int:
        pairs = self.self_mask_shares + self.mask_key_shares
        return ID_BYTES + sum(ID_BYTES + share.num_bytes() for _, share in pairs)


def _point(client_id: int) -> int:
    # Shamir points must be non-zero: client u evaluates at u + 1.
    return client_id + 1


def _ids_header(sender: int, recipient: int) -> bytes:
    return sender.to_bytes(ID_BYTES, "big") + recipient.to_bytes(ID_BYTES, "big")


def _require(count: int, threshold: int, what: str) -> None:
    if count < threshold:
        raise SecureAggregationError(f"secure aggregation aborted: {what} from only {count} clients, "
                                     f"fewer than threshold t={threshold}")


class SecureAggregationClient:
    """One hospital in the protocol. Its secret keys, shares and update never leave it
    except as the protocol's messages.

    Args:
      client_id: this client's index in ``[0, num_clients)``.
      config: the public protocol parameters.
      session_id: public bytes naming this protocol run (fresh per round).
    """

    def __init__(self, client_id: int, config: SecureAggregationConfig, session_id: bytes):
        if not 0 <= client_id < config.num_clients:
            raise ValueError(f"client_id must be in [0, {config.num_clients}), got {client_id}")
        self.client_id = client_id
        self.config = config
        self.session_id = session_id
        self._encryption_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._public_keys: dict[int, AdvertiseKeys] = {}
        self._self_mask_secret = b""
        self._own_shares: tuple[shamir.Share, shamir.Share] | None = None
        self._received: dict[int, tuple[shamir.Share, shamir.Share]] = {}
        self._share_senders: tuple[int, ...] = ()

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: the public halves of the share-encryption and mask key pairs."""
        return AdvertiseKeys(self.client_id, _raw_public(self._encryption_key), _raw_public(self._mask_key))

    def _share_key(self, peer: int) -> bytes:
        peer_public = X25519PublicKey.from_public_bytes(self._public_keys[peer].encryption_public_key)
        return _hkdf(self._encryption_key.exchange(peer_public), b"share-encryption", self.session_id)

    def share_keys(self, public_keys: Mapping[int, AdvertiseKeys]) -> ShareKeys:
        """Round 1: Shamir-shares ``b_u`` and ``s_u`` among ``U1`` and encrypts each share.

        Raises:
          SecureAggregationError: if ``U1`` has fewer than ``t`` clients, misses this
            client or repeats a public key.
        """
        _require(len(public_keys), self.config.threshold, "public keys")
        if any(v != message.sender for v, message in public_keys.items()):
            raise SecureAggregationError(f"client {self.client_id}: the key list files keys under the wrong ids")
        if public_keys.get(self.client_id) != self.advertise_keys():
            raise SecureAggregationError(f"client {self.client_id}: the key list does not hold its own keys")
        advertised = [key for message in public_keys.values()
                      for key in (message.encryption_public_key, message.mask_public_key)]
        if len(set(advertised)) != len(advertised):
            raise SecureAggregationError(f"client {self.client_id}: the key list repeats a public key")
        self._public_keys = dict(public_keys)
        members = sorted(public_keys)
        self._self_mask_secret = secrets.token_bytes(KEY_BYTES)
        xs = [_point(v) for v in members]
        self_mask_shares = shamir.share_bytes(self._self_mask_secret, self.config.threshold, xs)
        mask_key_shares = shamir.share_bytes(_raw_private(self._mask_key), self.config.threshold, xs)
        sealed = []
        for v, share_b, share_s in zip(members, self_mask_shares, mask_key_shares):
            if v == self.client_id:
                self._own_shares = (share_b, share_s)
                continue
            header = _ids_header(self.client_id, v)
            nonce = os.urandom(NONCE_BYTES)
            plaintext = header + share_b.to_bytes() + share_s.to_bytes()
            ciphertext = AESGCM(self._share_key(v)).encrypt(nonce, plaintext, self.session_id + header)
            sealed.append(EncryptedShare(self.client_id, v, nonce, ciphertext))
        return ShareKeys(self.client_id, tuple(sealed))

    def _open(self, message: EncryptedShare) -> tuple[shamir.Share, shamir.Share]:
        if message.recipient != self.client_id or message.sender not in self._public_keys:
            raise SecureAggregationError(f"client {self.client_id}: got a share from {message.sender} "
                                         f"addressed to {message.recipient}")
        header = _ids_header(message.sender, self.client_id)
        try:
            plaintext = AESGCM(self._share_key(message.sender)).decrypt(
                message.nonce, message.ciphertext, self.session_id + header)
        except InvalidTag as error:
            raise SecureAggregationError(f"client {self.client_id}: the encrypted share from client "
                                         f"{message.sender} failed authentication (tampered or misrouted)"
                                         ) from error
        if plaintext[:len(header)] != header:
            raise SecureAggregationError(f"client {self.client_id}: share from {message.sender} names the "
                                         f"wrong parties")
        body = plaintext[len(header):]
        half = len(body) // 2
        point = _point(self.client_id)
        return shamir.Share.from_bytes(point, body[:half]), shamir.Share.from_bytes(point, body[half:])

    def masked_input(self, encrypted_shares: Sequence[EncryptedShare], update: np.ndarray) -> MaskedInput:
        """Round 2: decrypts the shares it was sent and masks its encoded update.

        Args:
          encrypted_shares: the ciphertexts the server relayed to this client; their
            senders (and this client) form ``U2``.
          update: this client's flat float vector.

        Returns:
          ``y_u = encode(update) + PRF(b_u) +- PRF(s_uv) (mod 2^32)``.

        Raises:
          SecureAggregationError: if ``U2`` has fewer than ``t`` clients or a ciphertext
            fails authentication.
        """
        received = {}
        for message in encrypted_shares:
            if message.sender in received:
                raise SecureAggregationError(f"client {self.client_id}: two shares from client {message.sender}")
            received[message.sender] = self._open(message)
        self._received = received
        self._share_senders = tuple(sorted({*received, self.client_id}))
        _require(len(self._share_senders), self.config.threshold, "shares")
        update = np.asarray(update).ravel()
        if np.isnan(update).any():
            raise ValueError(f"client {self.client_id}: update contains NaN, which has no fixed-point code")
        masked = np.asarray(_encode(update, self.config.clip_range, self.config.fixed_point_scale)).copy()
        prf, chunk = self.config.prf, self.config.chunk_size
        add_prf_mask(masked, self_mask_seed(self._self_mask_secret, self.session_id), prf, chunk)
        for v in self._share_senders:
            if v != self.client_id:
                seed = pairwise_mask_seed(self._mask_key, self._public_keys[v].mask_public_key, self.session_id)
                add_prf_mask(masked, seed, prf, chunk, subtract=v < self.client_id)
        return MaskedInput(self.client_id, masked)

    def unmask(self, survivors: Sequence[int]) -> UnmaskingShares:
        """Round 3: shares of ``b_v`` for survivors ``v`` and of ``s_v`` for dropped ``v``.

        Raises:
          SecureAggregationError: if the survivor list has fewer than ``t`` clients, is not a
            subset of ``U2`` or misses this client.
        """
        survivors = tuple(sorted(set(survivors)))
        _require(len(survivors), self.config.threshold, "masked inputs")
        if self.client_id not in survivors or not set(survivors) <= set(self._share_senders):
            raise SecureAggregationError(f"client {self.client_id}: survivor list {survivors} is not a subset "
                                         f"of the share senders {self._share_senders} including itself")
        shares = {**self._received, self.client_id: self._own_shares}
        dropped = [v for v in self._share_senders if v not in survivors]
        return UnmaskingShares(self.client_id,
                               tuple((v, shares[v][0]) for v in survivors),
                               tuple((v, shares[v][1]) for v in dropped))


# Compiled once per vector length; a training loop keeps that length fixed.
_encode = jax.jit(fixed_point.encode, static_argnums=(1, 2))
_decode = jax.jit(fixed_point.decode, static_argnums=1)


class SecureAggregationServer:
    """The aggregator. It holds only public keys, relayed ciphertexts (in transit), masked
    vectors and the shares clients hand it; it never sees an update or a live secret key.

    Args:
      config: the public protocol parameters.
      session_id: public bytes naming this protocol run.
    """

    def __init__(self, config: SecureAggregationConfig, session_id: bytes):
        self.config = config
        self.session_id = session_id
        self.public_keys: dict[int, AdvertiseKeys] = {}
        self.share_senders: tuple[int, ...] = ()
        self.masked_inputs: dict[int, np.ndarray] = {}

    def _check_senders(self, senders: Sequence[int], allowed: Sequence[int], what: str) -> None:
        if len(set(senders)) != len(senders) or not set(senders) <= set(allowed):
            raise SecureAggregationError(f"secure aggregation aborted: {what} came from {sorted(senders)}, "
                                         f"expected distinct clients among {sorted(allowed)}")
        _require(len(senders), self.config.threshold, what)

    def collect_keys(self, messages: Sequence[AdvertiseKeys]) -> dict[int, AdvertiseKeys]:
        """Round 0: stores the advertised keys and returns the list broadcast to ``U1``."""
        self._check_senders([m.sender for m in messages], range(self.config.num_clients), "public keys")
        self.public_keys = {m.sender: m for m in messages}
        return dict(self.public_keys)

    def route_shares(self, messages: Sequence[ShareKeys]) -> dict[int, tuple[EncryptedShare, ...]]:
        """Round 1: forwards to every client of ``U2`` the ciphertexts addressed to it by ``U2``."""
        self._check_senders([m.sender for m in messages], list(self.public_keys), "shares")
        self.share_senders = tuple(sorted(m.sender for m in messages))
        routed: dict[int, list[EncryptedShare]] = {v: [] for v in self.share_senders}
        for message in messages:
            for sealed in message.encrypted_shares:
                if sealed.sender != message.sender:
                    raise SecureAggregationError(f"secure aggregation aborted: client {message.sender} sent a "
                                                 f"ciphertext labelled as from {sealed.sender}")
                if sealed.recipient in routed:
                    routed[sealed.recipient].append(sealed)
        return {v: tuple(sealed) for v, sealed in routed.items()}

    def collect_masked_inputs(self, messages: Sequence[MaskedInput]) -> tuple[int, ...]:
        """Round 2: stores the masked vectors and returns the survivor list ``U3``."""
        self._check_senders([m.sender for m in messages], self.share_senders, "masked inputs")
        shapes = {m.masked.shape for m in messages}
        if len(shapes) != 1 or any(m.masked.dtype != np.uint32 or m.masked.ndim != 1 for m in messages):
            raise SecureAggregationError(f"secure aggregation aborted: masked inputs must be 1-D uint32 of one "
                                         f"length, got shapes {sorted(shapes)}")
        self.masked_inputs = {m.sender: m.masked for m in messages}
        return tuple(sorted(self.masked_inputs))

    def unmask(self, messages: Sequence[UnmaskingShares]) -> np.ndarray:
        """Round 3: reconstructs the secrets it is owed and returns ``sum x_u mod 2^32``.

        Returns:
          1-D ``uint32`` sum of the survivors' encoded vectors.

        Raises:
          SecureAggregationError: with fewer than ``t`` responses, or a reconstructed mask
            key that does not match its advertised public key.
        """
        survivors = tuple(sorted(self.masked_inputs))
        self._check_senders([m.sender for m in messages], survivors, "unmasking shares")
        threshold, prf, chunk = self.config.threshold, self.config.prf, self.config.chunk_size
        total = np.zeros_like(next(iter(self.masked_inputs.values())))
        for vector in self.masked_inputs.values():
            total += vector
        self_shares: dict[int, list[shamir.Share]] = {u: [] for u in survivors}
        key_shares: dict[int, list[shamir.Share]] = {v: [] for v in self.share_senders if v not in survivors}
        for message in messages:
            for collected, pairs in ((self_shares, message.self_mask_shares), (key_shares, message.mask_key_shares)):
                for owner, share in pairs:
                    if owner not in collected or share.x != _point(message.sender):
                        raise SecureAggregationError(f"secure aggregation aborted: client {message.sender} sent "
                                                     f"an unexpected share of client {owner}'s secret")
                    collected[owner].append(share)
        for u, shares in self_shares.items():
            b_u = shamir.reconstruct_bytes(shares, threshold, KEY_BYTES)
            add_prf_mask(total, self_mask_seed(b_u, self.session_id), prf, chunk, subtract=True)
        for v, shares in key_shares.items():
            mask_key = X25519PrivateKey.from_private_bytes(shamir.reconstruct_bytes(shares, threshold, KEY_BYTES))
            if _raw_public(mask_key) != self.public_keys[v].mask_public_key:
                raise SecureAggregationError(f"secure aggregation aborted: the reconstructed mask key of "
                                             f"dropped client {v} does not match its public key")
            for u in survivors:
                seed = pairwise_mask_seed(mask_key, self.public_keys[u].mask_public_key, self.session_id)
                # Survivor u added PRF(s_uv) if u < v and subtracted it otherwise: undo that.
                add_prf_mask(total, seed, prf, chunk, subtract=u < v)
        return total


# --- Running one round, and the training loop's entry point --------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Dropouts:
    """Simulated dropouts: which clients stop answering, and from which round on.

    Attributes:
      before_share_keys: advertise keys, then vanish (never part of ``U2``).
      after_share_keys: send shares, then vanish before their masked input (the case the
        paper's ``s_u`` shares exist for: their pairwise masks are reconstructed).
      during_unmasking: send their masked input, then do not help unmask (their input
        still counts).

    Raises:
      ValueError: if a client is listed twice or an id is not an integer ``>= 0``.
    """

    before_share_keys: tuple[int, ...] = ()
    after_share_keys: tuple[int, ...] = ()
    during_unmasking: tuple[int, ...] = ()

    def __post_init__(self):
        listed = []
        for field in ("before_share_keys", "after_share_keys", "during_unmasking"):
            ids = tuple(getattr(self, field))
            if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in ids):
                raise ValueError(f"{field} must hold client ids (integers >= 0), got {ids!r}")
            object.__setattr__(self, field, tuple(sorted(int(i) for i in ids)))
            listed += ids
        if len(set(listed)) != len(listed):
            raise ValueError(f"a client may drop out only once, got {self!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecureAggregationReport:
    """What one protocol run cost, and whose input the sum holds.

    Attributes:
      bytes_per_client: for each round of :data:`ROUNDS`, the most bytes one client sent
        (the sum of its message sizes on the wire).
      plaintext_bytes: size of one client's update sent in the clear as float32.
      seconds: host wall-clock of each phase (:data:`ROUNDS`, plus ``"decode"`` from
        :func:`secure_sum`), all simulated parties run one after another.
      client_seconds: mean wall-clock one client spent in each round.
      dropped: clients whose input is not in the sum.
      survivors: clients whose input is in the sum (``U3``).
      coordinates_clipped: simulation diagnostic, never sent to the server: how many
        coordinates over all clients were outside ``[-clip_range, clip_range]``.
    """

    bytes_per_client: Mapping[str, int]
    plaintext_bytes: int
    seconds: Mapping[str, float]
    client_seconds: Mapping[str, float]
    dropped: tuple[int, ...]
    survivors: tuple[int, ...]
    coordinates_clipped: int


def _timed(call: Callable, *args):
    start = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - start


def run_protocol(vectors: np.ndarray, config: SecureAggregationConfig, dropouts: Dropouts = Dropouts(),
                 session_id: bytes | None = None) -> tuple[np.ndarray, SecureAggregationReport]:
    """Runs the four rounds between ``num_clients`` clients and one server.

    Args:
      vectors: ``[num_clients, m]`` float array, row ``u`` is client ``u``'s flat update.
      config: the protocol parameters.
      dropouts: which clients drop out and when.
      session_id: public bytes naming the run; fresh random bytes when ``None``.

    Returns:
      ``(codes, report)``: the ``uint32`` sum modulo ``2^32`` of the survivors' encoded
      vectors, and the cost report.

    Raises:
      ValueError: if ``vectors`` is not ``[num_clients, m]`` or a dropout id is out of range.
      SecureAggregationError: if fewer than ``threshold`` clients answer a round.

    **Formal guarantees**: as :func:`secure_sum`.
    """
    vectors = np.asarray(vectors)
    n = config.num_clients
    if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] < 1:
        raise ValueError(f"vectors must have shape [num_clients={n}, m >= 1], got {vectors.shape}")
    listed = dropouts.before_share_keys + dropouts.after_share_keys + dropouts.during_unmasking
    if any(i >= n for i in listed):
        raise ValueError(f"dropouts must name clients in [0, {n}), got {dropouts!r}")
    session_id = os.urandom(16) if session_id is None else session_id
    server = SecureAggregationServer(config, session_id)
    clients = [SecureAggregationClient(u, config, session_id) for u in range(n)]
    sent = {name: np.zeros(n, np.int64) for name in ROUNDS}
    spent = {name: np.zeros(n) for name in ROUNDS}
    server_seconds = {}

    def client_round(name, active, call):
        messages = []
        for u in active:
            message, seconds = _timed(call, u)
            sent[name][u], spent[name][u] = message.num_bytes, seconds
            messages.append(message)
        return messages

    active = list(range(n))
    messages = client_round("advertise_keys", active, lambda u: clients[u].advertise_keys())
    key_list, server_seconds["advertise_keys"] = _timed(server.collect_keys, messages)

    active = [u for u in active if u not in dropouts.before_share_keys]
    messages = client_round("share_keys", active, lambda u: clients[u].share_keys(key_list))
    routed, server_seconds["share_keys"] = _timed(server.route_shares, messages)

    active = [u for u in active if u not in dropouts.after_share_keys]
    messages = client_round("masked_input_collection", active,
                            lambda u: clients[u].masked_input(routed[u], vectors[u]))
    survivors, server_seconds["masked_input_collection"] = _timed(server.collect_masked_inputs, messages)

    active = [u for u in active if u not in dropouts.during_unmasking]
    messages = client_round("unmasking", active, lambda u: clients[u].unmask(survivors))
    codes, server_seconds["unmasking"] = _timed(server.unmask, messages)

    report = SecureAggregationReport(
        bytes_per_client={name: int(sent[name].max()) for name in ROUNDS},
        plaintext_bytes=4 * vectors.shape[1],
        seconds={name: float(spent[name].sum() + server_seconds[name]) for name in ROUNDS},
        client_seconds={name: float(spent[name][spent[name] > 0].mean()) if (spent[name] > 0).any() else 0.0
                        for name in ROUNDS},
        dropped=tuple(u for u in range(n) if u not in survivors),
        survivors=tuple(survivors),
        coordinates_clipped=int(np.sum(np.abs(vectors) > config.clip_range)))
    return codes, report


def _client_vectors(updates) -> tuple[np.ndarray, Callable[[np.ndarray], Params]]:
    # A list holds one pytree per client; anything else is one pytree of [C, ...] leaves.
    if isinstance(updates, list):
        if not updates:
            raise ValueError("updates must hold at least one client, got an empty list")
        updates = jax.tree_util.tree_map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *updates)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    if not leaves:
        raise ValueError("updates must have at least one leaf, got an empty pytree")
    leaves = [np.asarray(leaf) for leaf in leaves]
    if any(leaf.ndim < 1 or leaf.shape[0] != leaves[0].shape[0] for leaf in leaves):
        raise ValueError(f"every leaf of updates must share a leading client axis, got shapes "
                         f"{[leaf.shape for leaf in leaves]}")
    if any(not np.issubdtype(leaf.dtype, np.floating) and leaf.dtype != jnp.bfloat16 for leaf in leaves):
        raise ValueError(f"updates must be floating point, got dtypes {[str(leaf.dtype) for leaf in leaves]}")
    num_clients = leaves[0].shape[0]
    vectors = np.concatenate([leaf.reshape(num_clients, -1).astype(np.float32) for leaf in leaves], axis=1)

    def unflatten(flat: np.ndarray) -> Params:
        out, offset = [], 0
        for leaf in leaves:
            size = math.prod(leaf.shape[1:])
            out.append(jnp.asarray(flat[offset:offset + size].reshape(leaf.shape[1:]), leaf.dtype))
            offset += size
        return jax.tree_util.tree_unflatten(treedef, out)

    return vectors, unflatten


def secure_sum(updates, config: SecureAggregationConfig, key: PRNGKey,
               dropouts: Dropouts | None = None) -> tuple[Params, SecureAggregationReport]:
    """Sums the clients' updates through secure aggregation; a drop-in for a plaintext sum.

    Each client clips every coordinate to ``[-clip_range, clip_range]``, encodes it in
    fixed point and masks it; the server recovers only the sum over the clients that
    survive to the masked-input round, which is decoded here.

    Args:
      updates: a Python ``list`` of per-client pytrees, or one pytree whose leaves are
        ``[C, *param_shape]`` with ``C == config.num_clients``; floating point.
      config: the protocol parameters.
      key: JAX key that draws simulated dropouts after ShareKeys, each client
        independently with probability ``config.dropout_rate``; unused otherwise.
      dropouts: explicit dropouts; when given, ``key`` and ``dropout_rate`` are ignored.

    Returns:
      ``(sum, report)``: a pytree like one client's update holding the sum over
      ``report.survivors`` (divide by ``len(report.survivors)`` for a mean), within
      ``len(survivors) / (2 * fixed_point_scale)`` per coordinate of the sum of the clipped
      updates (plus one float32 rounding); and the :class:`SecureAggregationReport`.

    Raises:
      ValueError: if updates are not ``C == num_clients`` floating-point clients, or hold NaN.
      SecureAggregationError: if fewer than ``threshold`` clients answer a round (the
        paper's abort; a training loop may skip the round).

    **Formal guarantees**

    - Bound: against an honest-but-curious server colluding with any set of fewer than
      ``threshold`` clients, the joint view (public keys, ciphertexts, masked vectors,
      shares) reveals nothing about the other clients' inputs beyond the sum over the
      surviving honest clients (Bonawitz et al. 2017, §6, honest-but-curious setting);
      computational, under the hardness of Diffie-Hellman on Curve25519 and the security
      of HKDF-SHA256, AES-256-CTR/ChaCha20 as a PRF and AES-256-GCM. Shamir shares are
      information-theoretically hiding below the threshold.
    - Unit: one client's whole update.
    - Not protected: the sum itself (no differential privacy: with two survivors, a
      colluding client learns the other's update; add DP noise for that); who took part
      and who dropped; the vector length and ``config``; a server that deviates from the
      protocol (no signatures or consistency round: it can claim a survivor dropped and
      obtain both of its masks, and must be trusted to follow the protocol); the
      simulation runs every party in one process, so the separation is structural, not
      an isolation boundary; timing side channels.

    References:
      Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
      Learning", CCS, arXiv 1611.04482.
    """
    vectors, unflatten = _client_vectors(updates)
    if vectors.shape[0] != config.num_clients:
        raise ValueError(f"updates must hold num_clients={config.num_clients} clients, got {vectors.shape[0]}")
    if np.isnan(vectors).any():
        raise ValueError("updates contain NaN, which has no fixed-point code")
    if dropouts is None:
        dropped = ()
        if config.dropout_rate > 0:
            draws = np.asarray(jax.random.bernoulli(key, config.dropout_rate, (config.num_clients,)))
            dropped = tuple(int(u) for u in np.flatnonzero(draws))
        dropouts = Dropouts(after_share_keys=dropped)
    codes, report = run_protocol(vectors, config, dropouts)
    start = time.perf_counter()
    total = np.asarray(_decode(codes, config.fixed_point_scale))
    result = unflatten(total)
    seconds = {**report.seconds, "decode": time.perf_counter() - start}
    return result, dataclasses.replace(report, seconds=seconds)
