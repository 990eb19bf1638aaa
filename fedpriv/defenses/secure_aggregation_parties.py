"""The parties and messages of secure aggregation: config, client, server.

See :mod:`fedpriv.defenses.secure_aggregation` for the rounds; this module holds what
each party stores and sends.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import secrets
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import jax
import numpy as np

from fedpriv.defenses import fixed_point
from fedpriv.defenses import shamir
from fedpriv.privacy import _validation
from fedpriv.defenses.secure_aggregation_masks import (ID_BYTES, KEY_BYTES, NONCE_BYTES, PRFS, _hkdf, _raw_private,
                                                       _raw_public, add_prf_mask, pairwise_mask_seed, self_mask_seed)


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


