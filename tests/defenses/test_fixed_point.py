"""Fixed-point encoding into Z_2^32: codes, wraparound sums, decoding, overflow checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.defenses import fixed_point

SCALE = 2.0**16


def oracle_encode(values, clip_range, scale):
    # Explicit per-value loop in float64 Python arithmetic, half to even like jnp.round.
    out = []
    for value in np.asarray(values, np.float64).ravel():
        code = round(min(max(value, -clip_range), clip_range) * scale)
        out.append(code % 2**32)
    return np.array(out, np.uint64)


def test_encode_matches_an_explicit_loop_including_clipping_and_negative_wrap():
    values = np.array([0.0, 1.0, -1.0, 0.5, -0.25, 3.0, -7.5, 1 / SCALE, -1 / SCALE, 1.5 / SCALE,
                       2.5 / SCALE, -2.5 / SCALE, 0.123456], np.float32)
    codes = np.asarray(fixed_point.encode(values, 2.0, SCALE))
    assert codes.dtype == np.uint32
    np.testing.assert_array_equal(codes.astype(np.uint64), oracle_encode(values, 2.0, SCALE))
    assert codes[8] == 2**32 - 1  # -1 code is the top of the ring
    assert codes[5] == 2 * SCALE and codes[6] == 2**32 - 2 * SCALE  # clipped to +-clip_range
    assert codes[10] == 2 and codes[11] == 2**32 - 2  # 2.5 -> 2 (half to even)


def test_round_trip_is_within_half_a_step_and_exact_on_the_grid():
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, 10_000).astype(np.float32)
    decoded = np.asarray(fixed_point.decode(fixed_point.encode(values, 1.0, SCALE), SCALE))
    error = np.abs(decoded - values)
    assert error.max() <= 0.5 / SCALE
    assert error.max() > 0.4 / SCALE  # the bound is tight, not vacuous
    grid = (rng.integers(-SCALE, SCALE, 1000) / SCALE).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(fixed_point.decode(fixed_point.encode(grid, 1.0, SCALE), SCALE)), grid)


def test_sum_modulo_2_32_decodes_to_the_signed_sum_of_codes():
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, (8, 5000)).astype(np.float32)
    values[:, :10] = -1.0  # a sum well below zero must wrap and come back negative
    codes = fixed_point.encode(values, 1.0, SCALE)
    total = fixed_point.sum_codes(codes)
    assert total.dtype == jnp.uint32
    oracle_codes = oracle_encode(values, 1.0, SCALE).reshape(8, -1).astype(np.int64)
    signed = np.where(oracle_codes >= 2**31, oracle_codes - 2**32, oracle_codes).sum(axis=0)
    np.testing.assert_array_equal(np.asarray(total).astype(np.int64), signed % 2**32)
    np.testing.assert_array_equal(np.asarray(fixed_point.decode(total, SCALE)), (signed / SCALE).astype(np.float32))
    assert np.asarray(fixed_point.decode(total, SCALE))[0] == -8.0


def test_decode_is_exact_up_to_one_float32_rounding_near_the_int32_limits():
    codes = np.array([2**31 - 1, -(2**31), 2**24 + 1, -(2**30) - 3, 12345], np.int64)
    for scale in (1.0, 2.0**20, 1000.0):
        decoded = np.asarray(fixed_point.decode((codes % 2**32).astype(np.uint32), scale))
        expected = (codes / scale).astype(np.float32)
        # Power-of-two scales: bit-exact; others within 2 float32 ulps.
        np.testing.assert_array_max_ulp(decoded, expected, maxulp=0 if scale != 1000.0 else 2)


def test_jit_matches_eager():
    values = jnp.linspace(-2, 2, 1001)
    np.testing.assert_array_equal(jax.jit(fixed_point.encode, static_argnums=(1, 2))(values, 1.5, 1000.0),
                                  fixed_point.encode(values, 1.5, 1000.0))


def test_code_domain_bound_holds_even_when_clip_times_scale_is_not_an_integer():
    # clip_range * scale = 1000.7: the clipped value would round to 1001, past the bound 1000
    # that the overflow check counts on.
    codes = np.asarray(fixed_point.encode(np.array([5.0, -5.0], np.float32), 1.0007, 1000.0))
    assert fixed_point.max_code(1.0007, 1000.0) == 1000
    assert codes[0] == 1000 and codes[1] == 2**32 - 1000


def test_overflow_check_is_tight():
    # n * floor(clip * scale) <= 2^31 - 1 is the exact condition.
    assert fixed_point.check_no_overflow(1, 1.0, 2**31 - 1) == 2**31 - 1
    fixed_point.check_no_overflow(2, 1.0, (2**31 - 1) // 2)
    with pytest.raises(ValueError, match="fixed_point_scale"):
        fixed_point.check_no_overflow(2, 1.0, (2**31 - 1) // 2 + 1)
    largest = fixed_point.check_no_overflow(16, 0.5, 2.0**20)
    fixed_point.check_no_overflow(16, 0.5, largest)
    with pytest.raises(ValueError, match="allowed: fixed_point_scale <="):
        fixed_point.check_no_overflow(16, 0.5, largest * 1.001)
    with pytest.raises(ValueError, match="encoded as 0"):
        fixed_point.check_no_overflow(4, 1e-3, 100.0)
