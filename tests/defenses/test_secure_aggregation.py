"""Secure aggregation (Bonawitz et al. 2017): exact sums, dropouts, aborts, hiding, costs."""

import dataclasses
import itertools

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv.defenses import fixed_point
from fedpriv.defenses import secure_aggregation as sa

SCALE = 2.0**16
SESSION = b"test-session-id!"


def config(**overrides):
    return sa.SecureAggregationConfig(**{"num_clients": 4, "threshold": 3, "fixed_point_scale": SCALE, **overrides})


def client_vectors(num_clients, length, seed=0, spread=1.3):
    return np.random.default_rng(seed).uniform(-spread, spread, (num_clients, length)).astype(np.float32)


def oracle_sum(vectors, members, clip_range=1.0, scale=SCALE):
    # Independent encoding in float64 and int64, summed modulo 2^32 by hand.
    codes = np.round(np.clip(vectors.astype(np.float64), -clip_range, clip_range) * scale).astype(np.int64)
    return codes[list(members)].sum(axis=0) % 2**32


def drive(cfg, vectors, session=SESSION, relay=None):
    """Runs the four rounds by hand; ``relay`` may alter what the server forwards in round 1."""
    server = sa.SecureAggregationServer(cfg, session)
    clients = [sa.SecureAggregationClient(u, cfg, session) for u in range(cfg.num_clients)]
    keys = server.collect_keys([c.advertise_keys() for c in clients])
    routed = server.route_shares([c.share_keys(keys) for c in clients])
    if relay is not None:
        routed = relay(routed)
    masked = [c.masked_input(routed[c.client_id], vectors[c.client_id]) for c in clients]
    survivors = server.collect_masked_inputs(masked)
    total = server.unmask([c.unmask(survivors) for c in clients])
    return server, clients, masked, total


@pytest.mark.parametrize("bad,match", [
    (dict(threshold=5), r"threshold must satisfy 1 < threshold <= num_clients \(4\), got 5"),
    (dict(threshold=1), "threshold"),
    (dict(threshold=2.5), "threshold"),
    (dict(num_clients=1, threshold=1), "num_clients"),
    (dict(fixed_point_scale=2.0**30), "fixed_point_scale"),
    (dict(clip_range=-1.0), "clip_range"),
    (dict(prf="numpy"), "prf"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(dropout_rate=1.0), "dropout_rate"),
])
def test_config_rejects_bad_values_before_any_work(bad, match):
    with pytest.raises(ValueError, match=match):
        config(**bad)


def test_aes_ctr_mask_matches_an_ecb_counter_oracle_and_chunking_never_changes_masks():
    seed = bytes(range(32))
    length = 1000
    # Oracle: AES-CTR by hand, encrypting big-endian counter blocks 0, 1, 2, ... with ECB.
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(length * 4 // 16))
    np.testing.assert_array_equal(sa.prf_mask(seed, length, "aes-ctr"), np.frombuffer(blocks, "<u4"))
    for prf in sa.PRFS:
        whole = sa.prf_mask(seed, length, prf, chunk_size=1 << 16)
        np.testing.assert_array_equal(sa.prf_mask(seed, length, prf, chunk_size=3), whole)
        target = whole.copy()
        sa.add_prf_mask(target, seed, prf, 7, subtract=True)
        np.testing.assert_array_equal(target, np.zeros(length, np.uint32))
    assert not np.array_equal(sa.prf_mask(seed, length, "aes-ctr"), sa.prf_mask(seed, length, "chacha20"))


def test_pairwise_seeds_agree_on_both_ends_and_differ_between_pairs_and_sessions():
    keys = [X25519PrivateKey.generate() for _ in range(3)]
    public = [sa._raw_public(k) for k in keys]
    assert sa.pairwise_mask_seed(keys[0], public[1], SESSION) == sa.pairwise_mask_seed(keys[1], public[0], SESSION)
    assert sa.pairwise_mask_seed(keys[0], public[1], SESSION) != sa.pairwise_mask_seed(keys[0], public[2], SESSION)
    assert sa.pairwise_mask_seed(keys[0], public[1], SESSION) != sa.pairwise_mask_seed(keys[0], public[1], b"other")


@pytest.mark.parametrize("prf", sa.PRFS)
def test_sum_mod_2_32_equals_the_plaintext_sum_of_the_encoded_vectors(prf):
    cfg = config(prf=prf, chunk_size=4096)
    vectors = client_vectors(4, 10_000)
    codes, report = sa.run_protocol(vectors, cfg)
    assert codes.dtype == np.uint32
    np.testing.assert_array_equal(codes.astype(np.int64), oracle_sum(vectors, range(4)))
    assert report.survivors == (0, 1, 2, 3) and report.dropped == ()
    assert report.coordinates_clipped == int(np.sum(np.abs(vectors) > 1.0)) > 0


def test_secure_sum_is_within_quantisation_error_of_the_true_sum_for_lists_and_stacked_pytrees():
    cfg = config(num_clients=5, threshold=3)
    rng = np.random.default_rng(2)
    updates = [{"dense": {"kernel": rng.normal(0, 0.3, (30, 20)).astype(np.float32),
                          "bias": rng.normal(0, 0.3, (20,)).astype(np.float32)}} for _ in range(5)]
    total, report = sa.secure_sum(updates, cfg, jax.random.key(0))
    for name in ("kernel", "bias"):
        clipped = sum(np.clip(u["dense"][name], -1, 1) for u in updates)
        error = np.abs(np.asarray(total["dense"][name]) - clipped)
        assert total["dense"][name].shape == clipped.shape and total["dense"][name].dtype == jnp.float32
        assert error.max() <= 5 * 0.5 / SCALE + 1e-6  # n half-steps, plus float32 rounding of the sum
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *updates)
    again, _ = sa.secure_sum(stacked, cfg, jax.random.key(0))
    jax.tree_util.tree_map(np.testing.assert_array_equal, total, again)  # masks differ, the sum does not
    assert set(report.seconds) == {*sa.ROUNDS, "decode"}


def test_masked_vectors_are_indistinguishable_from_uniform():
    cfg = config(num_clients=3, threshold=2)
    length = 1 << 16
    for plaintext in (np.zeros((3, length), np.float32), np.full((3, length), 0.75, np.float32)):
        server, _, masked, total = drive(cfg, plaintext)
        for message in masked:
            words = message.masked
            assert stats.kstest(words / 2**32, "uniform").pvalue > 1e-3
            for byte in (words >> 24, words & 0xFF):
                counts = np.bincount(byte.astype(np.int64), minlength=256)
                assert stats.chisquare(counts).pvalue > 1e-3
        np.testing.assert_array_equal(total.astype(np.int64), oracle_sum(plaintext, range(3)))
    # The same checks have power: they reject the unmasked codes and a mask with one bit stuck.
    codes = np.asarray(fixed_point.encode(np.full(length, 0.75), 1.0, SCALE))
    assert stats.kstest(codes / 2**32, "uniform").pvalue < 1e-10
    biased = masked[0].masked & np.uint32(0xFFFFFFFE)
    assert stats.chisquare(np.bincount((biased & 0xFF).astype(np.int64), minlength=256)).pvalue < 1e-10


def test_correct_sum_under_every_dropout_pattern_of_up_to_n_minus_t_clients_after_share_keys():
    cfg = config(num_clients=6, threshold=3)
    vectors = client_vectors(6, 257)
    for count in range(0, 4):
        for dropped in itertools.combinations(range(6), count):
            codes, report = sa.run_protocol(vectors, cfg, sa.Dropouts(after_share_keys=dropped))
            survivors = tuple(u for u in range(6) if u not in dropped)
            assert report.survivors == survivors and report.dropped == dropped
            np.testing.assert_array_equal(codes.astype(np.int64), oracle_sum(vectors, survivors))


def test_dropouts_in_every_round_together():
    cfg = config(num_clients=7, threshold=3, prf="chacha20")
    vectors = client_vectors(7, 300, seed=3)
    dropouts = sa.Dropouts(before_share_keys=(6,), after_share_keys=(0, 4), during_unmasking=(2,))
    codes, report = sa.run_protocol(vectors, cfg, dropouts)
    assert report.survivors == (1, 2, 3, 5) and report.dropped == (0, 4, 6)
    np.testing.assert_array_equal(codes.astype(np.int64), oracle_sum(vectors, (1, 2, 3, 5)))


@pytest.mark.parametrize("dropouts,round_name", [
    (sa.Dropouts(after_share_keys=(0, 2, 5, 1)), "masked inputs from only 2 clients"),
    (sa.Dropouts(before_share_keys=(0, 1, 2, 3)), "shares from only 2 clients"),
    (sa.Dropouts(after_share_keys=(0, 1), during_unmasking=(2, 3)), "unmasking shares from only 2 clients"),
])
def test_abort_with_a_clear_error_below_the_threshold(dropouts, round_name):
    cfg = config(num_clients=6, threshold=3)
    with pytest.raises(sa.SecureAggregationError, match=f"{round_name}, fewer than threshold t=3"):
        sa.run_protocol(client_vectors(6, 10), cfg, dropouts)


def test_a_tampered_or_misrouted_ciphertext_is_rejected():
    cfg = config()
    vectors = client_vectors(4, 16)

    def flip_one_bit(routed):
        sealed = routed[2][0]
        broken = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
        return {**routed, 2: (dataclasses.replace(sealed, ciphertext=broken),) + routed[2][1:]}

    with pytest.raises(sa.SecureAggregationError, match=r"client 2: .* failed authentication"):
        drive(cfg, vectors, relay=flip_one_bit)

    def misroute(routed):  # client 1's share for 3 handed to 3 but relabelled as from 0
        sealed = next(s for s in routed[3] if s.sender == 1)
        return {**routed, 3: tuple(dataclasses.replace(s, sender=0) if s is sealed else s
                                   for s in routed[3] if s.sender != 0)}

    with pytest.raises(sa.SecureAggregationError, match="failed authentication"):
        drive(cfg, vectors, relay=misroute)


def test_the_server_holds_no_update_and_no_live_secret_key():
    cfg = config()
    vectors = client_vectors(4, 64)
    server, clients, masked, total = drive(cfg, vectors)

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item)
        elif dataclasses.is_dataclass(value):
            yield from walk(vars(value))
        else:
            yield value

    held = list(walk(vars(server)))
    assert not any(isinstance(item, X25519PrivateKey) for item in held)
    assert not any(isinstance(item, np.ndarray) and item.dtype.kind == "f" for item in held)
    for u, vector in server.masked_inputs.items():
        encoded = np.asarray(fixed_point.encode(vectors[u], 1.0, SCALE))
        assert np.mean(vector == encoded) < 0.01
    np.testing.assert_array_equal(total.astype(np.int64), oracle_sum(vectors, range(4)))


def test_bytes_per_client_follow_the_message_layout():
    n, length = 5, 1000
    codes, report = sa.run_protocol(client_vectors(n, length), config(num_clients=n, threshold=3),
                                    sa.Dropouts(after_share_keys=(4,)))
    share = 2 * 4 + 12 + (8 + 48 + 48 + 16)  # ids, nonce, (ids + two 3-chunk shares + GCM tag)
    assert report.bytes_per_client == {
        "advertise_keys": 4 + 32 + 32,
        "share_keys": 4 + (n - 1) * share,
        "masked_input_collection": 4 + 4 * length,
        "unmasking": 4 + n * (4 + 48),  # 4 self-mask shares + 1 mask-key share
    }
    assert report.plaintext_bytes == 4 * length


def test_dropouts_drawn_from_the_key_are_reproducible_and_results_bit_identical():
    cfg = config(num_clients=8, threshold=2, dropout_rate=0.4)
    updates = {"w": jnp.asarray(client_vectors(8, 50, seed=4))}
    first, first_report = sa.secure_sum(updates, cfg, jax.random.key(7))
    second, second_report = sa.secure_sum(updates, cfg, jax.random.key(7))
    np.testing.assert_array_equal(first["w"], second["w"])
    assert first_report.dropped == second_report.dropped
    draws = np.asarray(jax.random.bernoulli(jax.random.key(7), 0.4, (8,)))
    assert first_report.dropped == tuple(np.flatnonzero(draws)) and 0 < len(first_report.dropped) < 7
    survivors = list(first_report.survivors)
    np.testing.assert_allclose(first["w"], np.clip(np.asarray(updates["w"])[survivors], -1, 1).sum(0), atol=8 / SCALE)


def test_secure_sum_rejects_nan_and_a_wrong_client_count():
    with pytest.raises(ValueError, match="NaN"):
        sa.secure_sum({"w": jnp.full((4, 3), jnp.nan)}, config(), jax.random.key(0))
    with pytest.raises(ValueError, match="num_clients=4"):
        sa.secure_sum({"w": jnp.zeros((3, 3))}, config(), jax.random.key(0))
