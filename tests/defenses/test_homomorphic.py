"""CKKS aggregation with TenSEAL: exact-sum oracle, roles, chunking, parameter checks."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses.homomorphic import Aggregator
from fedpriv.defenses.homomorphic import CKKSConfig
from fedpriv.defenses.homomorphic import HEClient
from fedpriv.defenses.homomorphic import KeyHolder
from fedpriv.defenses.homomorphic import encrypted_sum
from fedpriv.defenses.homomorphic import encrypted_tree_sum

ts = pytest.importorskip("tenseal", reason="homomorphic aggregation needs the optional TenSEAL extra")

# Small ring for speed: 2048 slots, one 60-bit data prime (aggregation needs no rescaling).
SMALL = CKKSConfig(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49), global_scale=2.0**40)
# Measured max abs error of a sum of 3 unit-normal vectors: ~1e-8 (8192, scale 2**40);
# 1e-6 leaves a 100x margin and is still far below any update's scale.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def key_holder():
    return KeyHolder(SMALL)


def test_default_parameters_sum_exactly_to_float_precision_across_chunks():
    # D = 5000 is not a multiple of the 4096 slots: one full and one partial ciphertext.
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(3, 5000)).astype(np.float32)
    total, report = encrypted_sum(updates, CKKSConfig())
    oracle = np.sum(updates.astype(np.float64), axis=0)  # float64 sum, an explicit oracle
    assert total.shape == (5000,) and total.dtype == np.float64
    assert np.max(np.abs(total - oracle)) < TOLERANCE
    assert report.max_abs_error == pytest.approx(np.max(np.abs(total - oracle)))
    assert report.max_abs_error > 0  # CKKS is approximate: a zero error would mean no encryption
    assert report.num_clients == 3 and report.dimension == 5000 and report.ciphertexts_per_client == 2
    assert report.plaintext_bytes_per_client == 4 * 5000
    # Two fresh ciphertexts at (60, 40, 40, 60) are ~330 kB each (measured), far above 20 kB.
    assert 2 * 250_000 < report.bytes_per_client < 2 * 450_000
    assert report.expansion > 20
    assert report.public_context_bytes > 100_000
    assert min(report.encrypt_seconds, report.add_seconds, report.decrypt_seconds) > 0
    flat = report.as_dict()
    assert flat["he.dimension"] == 5000 and "he.expansion" in flat


@pytest.mark.parametrize("dimension", [1, 2047, 2048, 2049, 4097])
def test_chunking_handles_any_length(key_holder, dimension):
    rng = np.random.default_rng(dimension)
    rows = rng.uniform(-1, 1, size=(2, dimension))
    clients = [HEClient(SMALL, key_holder.public_context) for _ in range(2)]
    encrypted = [client.encrypt(row) for client, row in zip(clients, rows)]
    assert len(encrypted[0].chunks) == math.ceil(dimension / 2048)
    total = key_holder.decrypt(Aggregator(key_holder.public_context).add(encrypted))
    assert total.shape == (dimension,)
    np.testing.assert_allclose(total, rows[0] + rows[1], rtol=0, atol=TOLERANCE)


def test_aggregator_cannot_decrypt(key_holder):
    aggregator = Aggregator(key_holder.public_context)
    assert not aggregator.context.is_private() and not aggregator.context.has_secret_key()
    encrypted = HEClient(SMALL, key_holder.public_context).encrypt(np.arange(10.0))
    total = aggregator.add([encrypted, encrypted])
    vector = ts.ckks_vector_from(aggregator.context, total.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    np.testing.assert_allclose(key_holder.decrypt(total), 2 * np.arange(10.0), atol=TOLERANCE)


def test_parties_refuse_a_context_with_the_secret_key(key_holder):
    private = key_holder._context.serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="secret key"):
        Aggregator(private)
    with pytest.raises(ValueError, match="secret key"):
        HEClient(SMALL, private)


def test_encryption_is_randomised(key_holder):
    client = HEClient(SMALL, key_holder.public_context)
    first, second = client.encrypt(np.zeros(4)), client.encrypt(np.zeros(4))
    assert first.chunks[0] != second.chunks[0]  # IND-CPA needs fresh randomness per ciphertext


def test_tree_sum_keeps_structure_and_matches_plaintext_sum():
    rng = np.random.default_rng(1)
    updates = {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}}
    total, report = encrypted_tree_sum(updates, SMALL)
    assert report.dimension == 20 and report.num_clients == 4
    assert total["dense"]["kernel"].shape == (3, 5) and total["dense"]["bias"].shape == (5,)
    for name in ("kernel", "bias"):
        oracle = np.sum(np.asarray(updates["dense"][name], np.float64), axis=0)
        np.testing.assert_allclose(np.asarray(total["dense"][name]), oracle, atol=1e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(poly_modulus_degree=1000), "poly_modulus_degree"),
    (dict(poly_modulus_degree=65536), "poly_modulus_degree"),
    (dict(poly_modulus_degree=True), "poly_modulus_degree"),
    (dict(poly_modulus_degree=4096), r"coeff_mod_bit_sizes .*200 bits.*109"),
    (dict(coeff_mod_bit_sizes=(60, 40, 40, 60, 19)), r"219 bits.*218"),
    (dict(coeff_mod_bit_sizes=(61, 40, 61)), "coeff_mod_bit_sizes"),
    (dict(coeff_mod_bit_sizes=(60,)), "at least two"),
    (dict(coeff_mod_bit_sizes="60,60"), "coeff_mod_bit_sizes"),
    (dict(global_scale=1.0), "global_scale"),
    (dict(global_scale=math.nan), "global_scale"),
    (dict(global_scale=2.0**140), r"global_scale.*< 140"),
])
def test_bad_parameters_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        CKKSConfig(**fields)


def test_parameters_seal_rejects_become_a_value_error_naming_the_set():
    # No 16-bit prime is 1 mod 16384, so SEAL cannot build this modulus although it passes our checks.
    config = CKKSConfig(poly_modulus_degree=8192, coeff_mod_bit_sizes=(16, 16), global_scale=2.0**8)
    with pytest.raises(ValueError, match=r"SEAL rejects the parameter set CKKS\(poly_modulus_degree=8192"):
        KeyHolder(config)
    with pytest.raises(ValueError, match="SEAL rejects"):
        encrypted_sum(np.ones((2, 3)), config)


def test_bad_updates_fail_before_any_encryption():
    with pytest.raises(ValueError, match=r"updates must be a finite array \[C, D\]"):
        encrypted_sum(np.ones(3), SMALL)
    with pytest.raises(ValueError, match="finite"):
        encrypted_sum(np.array([[1.0, np.nan]]), SMALL)
    # SMALL holds |values| < 2**59 / 2**40 = 2**19; a sum of 2 * 2**19 would wrap around silently.
    assert SMALL.max_abs_value == 2.0**19
    with pytest.raises(ValueError, match="too large"):
        encrypted_sum(np.full((2, 3), 2.0**19), SMALL)
    with pytest.raises(ValueError, match="same size"):
        holder = KeyHolder(SMALL)
        client = HEClient(SMALL, holder.public_context)
        Aggregator(holder.public_context).add([client.encrypt(np.ones(3)), client.encrypt(np.ones(4))])
