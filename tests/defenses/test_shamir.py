"""Shamir secret sharing: any t shares reconstruct, t - 1 shares say nothing."""

import itertools
import math
import os
from fractions import Fraction

import pytest

from fedpriv.defenses import shamir

P = shamir.MERSENNE_127


def test_field_layout_for_the_mersenne_prime():
    assert P == 2**127 - 1
    assert shamir.chunk_bytes() == 15  # 256^15 = 2^120 < p, 256^16 > p
    assert shamir.element_bytes() == 16


def test_evaluation_and_interpolation_match_exact_rational_lagrange():
    # Oracle: an integer polynomial evaluated over the integers, and Lagrange at 0 in exact
    # rationals; mod p both must agree with the field routines.
    coefficients = [123456789, -987654, 4242, 17, -3]
    xs = [1, 2, 5, 7, 11]
    ys = [sum(c * x**k for k, c in enumerate(coefficients)) for x in xs]
    for x, y in zip(xs, ys):
        assert shamir.evaluate_polynomial([c % P for c in coefficients], x) == y % P
    rational = sum(Fraction(y) * Fraction(math.prod(xj for xj in xs if xj != xi),
                                          math.prod(xj - xi for xj in xs if xj != xi))
                   for xi, y in zip(xs, ys))
    assert rational == coefficients[0]
    assert shamir.interpolate_at_zero(list(zip(xs, [y % P for y in ys]))) == coefficients[0] % P


@pytest.mark.parametrize("num_parties,threshold", [(6, 4), (5, 2), (4, 4)])
def test_every_subset_of_t_or_more_shares_reconstructs_a_32_byte_secret(num_parties, threshold):
    secret = os.urandom(32)
    shares = shamir.share_bytes(secret, threshold, range(1, num_parties + 1))
    assert len(shares) == num_parties and all(len(s.values) == 3 for s in shares)  # 15 + 15 + 2 bytes
    for size in range(threshold, num_parties + 1):
        for subset in itertools.combinations(shares, size):
            assert shamir.reconstruct_bytes(subset, threshold, 32) == secret


def test_fewer_than_t_shares_are_refused_and_interpolate_to_a_wrong_value():
    secret = os.urandom(32)
    shares = shamir.share_bytes(secret, 4, range(1, 7))
    with pytest.raises(ValueError, match="threshold=4"):
        shamir.reconstruct_bytes(shares[:3], 4, 32)
    # Forcing interpolation through t - 1 points gives garbage (probability 1 - 1/p).
    chunk = int.from_bytes(secret[:15], "big")
    assert shamir.interpolate_at_zero([(s.x, s.values[0]) for s in shares[:3]]) != chunk


@pytest.mark.parametrize("prime,threshold,points", [(7, 3, (1, 2)), (11, 2, (4,)), (5, 4, (1, 3, 4))])
def test_t_minus_one_shares_have_the_same_distribution_for_every_secret(prime, threshold, points):
    # Exhaustive over all coefficient vectors of a small field: for each secret the map
    # coefficients -> (f(x))_{x in points} hits every share tuple exactly once, so the
    # t - 1 shares are uniform whatever the secret (perfect secrecy).
    for secret in range(prime):
        counts = {}
        for tail in itertools.product(range(prime), repeat=threshold - 1):
            shares = tuple(shamir.evaluate_polynomial((secret, *tail), x, prime) for x in points)
            counts[shares] = counts.get(shares, 0) + 1
        assert len(counts) == prime ** len(points)
        assert set(counts.values()) == {1}


def test_t_minus_one_shares_are_consistent_with_any_other_secret():
    # The information-theoretic argument in the large field: take t - 1 real shares of one
    # secret, pick any other secret, and the polynomial through (0, other) and those shares
    # has degree <= t - 1, matches all of them, and differs from the real one elsewhere.
    threshold = 4
    xs = [1, 2, 3, 4, 5]
    secret, other = 1234567, 7654321
    real = shamir.share_element(secret, threshold, xs)
    known = list(zip(xs[:threshold - 1], real[:threshold - 1]))
    points = [(0, other)] + known

    def value_at(z, through):  # P(z) for the polynomial through ``through`` (z not a node)
        return shamir.interpolate_at_zero([((x - z) % P, y) for x, y in through])

    fourth = (xs[3], value_at(xs[3], points))
    # t shares (the t - 1 real ones plus a fourth) that reconstruct the other secret ...
    assert shamir.interpolate_at_zero(known + [fourth]) == other
    # ... from one polynomial of degree t - 1: a different t-subset predicts the same fifth value.
    assert value_at(xs[4], known + [fourth]) == value_at(xs[4], points)
    # The real fourth share gives back the real secret, and differs from the fitted one.
    assert shamir.interpolate_at_zero(known + [(xs[3], real[3])]) == secret
    assert fourth[1] != real[3]


def test_fresh_randomness_each_time():
    first = shamir.share_bytes(b"\x01" * 32, 3, [1, 2, 3])
    second = shamir.share_bytes(b"\x01" * 32, 3, [1, 2, 3])
    assert first != second


def test_share_bytes_round_trip_and_rejects_out_of_field_values():
    share = shamir.share_bytes(os.urandom(32), 2, [1, 2])[1]
    data = share.to_bytes()
    assert len(data) == share.num_bytes() == 48
    assert shamir.Share.from_bytes(2, data) == share
    with pytest.raises(ValueError, match="outside the field"):
        shamir.Share.from_bytes(2, b"\xff" * 16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(secret=5, threshold=4, xs=[1, 2, 3]), "threshold"),
    (dict(secret=5, threshold=0, xs=[1, 2, 3]), "threshold"),
    (dict(secret=5, threshold=2, xs=[1, 1, 3]), "distinct"),
    (dict(secret=5, threshold=2, xs=[0, 1, 3]), "non-zero"),
    (dict(secret=P, threshold=2, xs=[1, 2, 3]), "secret"),
])
def test_share_element_validates_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shamir.share_element(**kwargs)
