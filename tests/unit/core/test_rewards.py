"""Reward split: integer micro-tokens, parts sum exactly to the pool."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from prime.core.rewards import MICRO, split_pool, to_micro


def check_split(pool: int, weights: dict[bytes, float]) -> dict[bytes, int]:
    shares = split_pool(pool, weights)
    positive = {k: w for k, w in weights.items() if w > 0}
    assert set(shares) == set(positive)
    assert sum(shares.values()) == pool
    total = sum(Fraction(w) for w in positive.values())
    for k, w in positive.items():
        exact = pool * Fraction(w) / total
        assert abs(shares[k] - exact) < 1, (k, shares[k], float(exact))
        assert shares[k] >= 0
    return shares


def test_many_random_weight_sets_sum_exactly():
    rng = random.Random(1234)
    for _ in range(3000):
        n = rng.randint(1, 12)
        weights = {bytes([i]) * 4: rng.choice([rng.random(), rng.randint(1, 1000), rng.random() * 1e-6, 0.0])
                   for i in range(n)}
        if not any(w > 0 for w in weights.values()):
            weights[b"x"] = 1.0
        pool = rng.choice([1, 7, 100 * MICRO, rng.randint(1, 10**12), 10**6 * MICRO])
        check_split(pool, weights)


def test_large_pools_still_sum_exactly():
    """pool_micro is an int of any size; float rounding must not make the split overpay."""
    rng = random.Random(7)
    for _ in range(300):
        weights = {bytes([i]): rng.random() for i in range(rng.randint(2, 6))}
        check_split(rng.choice([10**18, 2**60 + 3, 10**16 + 1]), weights)


def test_equal_weights_split_evenly_with_deterministic_remainder():
    shares = check_split(10, {b"a": 1.0, b"b": 1.0, b"c": 1.0})
    assert sorted(shares.values()) == [3, 3, 4]
    assert split_pool(10, {b"c": 1.0, b"a": 1.0, b"b": 1.0}) == shares


def test_zero_and_negative_weights_get_nothing():
    shares = check_split(100, {b"a": 0.0, b"b": 3.0, b"c": 1.0, b"d": -5.0})
    assert shares == {b"b": 75, b"c": 25}
    assert b"a" not in shares and b"d" not in shares


def test_degenerate_pools():
    assert split_pool(0, {b"a": 1.0}) == {}
    assert split_pool(-5, {b"a": 1.0}) == {}
    assert split_pool(100, {}) == {}
    assert split_pool(100, {b"a": 0.0}) == {}
    assert split_pool(1, {b"a": 0.4, b"b": 0.6}) == {b"a": 0, b"b": 1}


@pytest.mark.parametrize("tokens, micro", [(1.0, MICRO), (100.0, 100 * MICRO), (0.000001, 1), (0.1, 100_000), (0.0, 0)])
def test_to_micro(tokens, micro):
    assert to_micro(tokens) == micro
