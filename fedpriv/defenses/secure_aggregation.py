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
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.typing import Params, PRNGKey


from fedpriv.defenses.secure_aggregation_masks import (KEY_BYTES, ID_BYTES, NONCE_BYTES, PRFS, ROUNDS,  # noqa: F401
                                                       TAG_BYTES, _hkdf, _raw_private, _raw_public, add_prf_mask,
                                                       pairwise_mask_seed, prf_mask, self_mask_seed)
from fedpriv.defenses.secure_aggregation_parties import (AdvertiseKeys, EncryptedShare, MaskedInput,  # noqa: F401
                                                         SecureAggregationClient, SecureAggregationConfig,
                                                         SecureAggregationError, SecureAggregationServer, ShareKeys,
                                                         UnmaskingShares, _decode, _ids_header, _point, _require)

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

