"""Key derivation and the mask PRF of secure aggregation (Bonawitz et al. 2017).

Shared secrets come from X25519 agreements expanded by HKDF-SHA256 under the session id;
masks are AES-256-CTR or ChaCha20 keystreams read as uint32 words (never NumPy's
generators, which are not cryptographic).
"""

from __future__ import annotations


from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers import modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import numpy as np



PRFS = ("aes-ctr", "chacha20")
ROUNDS = ("advertise_keys", "share_keys", "masked_input_collection", "unmasking")
KEY_BYTES = 32
ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16



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


