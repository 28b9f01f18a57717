"""split_pool: parts sum exactly to the pool, each within one micro-unit of its exact share."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prime.core.rewards import MICRO, split_pool

weights = st.dictionaries(
    st.binary(min_size=1, max_size=4),
    st.one_of(st.floats(0, 1e9, allow_nan=False), st.integers(0, 10**6).map(float), st.just(0.0)),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**6 * MICRO), weights)
def test_split_exact_and_proportional(pool, ws):
    positive = {k: w for k, w in ws.items() if w > 0}
    assume(positive)
    shares = split_pool(pool, ws)
    assert set(shares) == set(positive)  # zero weights get nothing
    assert sum(shares.values()) == pool
    total = sum(Fraction(w) for w in positive.values())
    for k, w in positive.items():
        assert shares[k] >= 0
        assert abs(shares[k] - pool * Fraction(w) / total) < 1


@settings(max_examples=100, deadline=None)
@given(st.integers(-10, 10**9), st.dictionaries(st.binary(max_size=2), st.floats(-5, 0), max_size=5))
def test_no_positive_weight_or_pool_pays_nothing(pool, ws):
    assert split_pool(pool, ws) == {}
