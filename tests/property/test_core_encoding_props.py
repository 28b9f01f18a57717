"""Canonical msgpack: generated nested records round-trip, and key order never changes the bytes."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core import encoding

SETTINGS = settings(max_examples=200, deadline=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
records = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=10), children, max_size=6),
    ),
    max_leaves=20,
)


def shuffled(obj, rng: random.Random):
    """The same record with every dict's insertion order permuted."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rng) for v in obj]
    return obj


@SETTINGS
@given(records)
def test_round_trip(record):
    data = encoding.pack(record)
    assert encoding.unpack(data) == record
    assert encoding.pack(encoding.unpack(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), records, max_size=5), st.integers(0, 2**32))
def test_key_order_never_changes_bytes(record, seed):
    assert encoding.pack(shuffled(record, random.Random(seed))) == encoding.pack(record)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), records, min_size=1, max_size=4))
def test_distinct_records_distinct_bytes(record):
    key = next(iter(record))
    other = {**record, key: ["changed", record[key]]}
    assert encoding.pack(other) != encoding.pack(record)


@SETTINGS
@given(st.floats(allow_nan=True), st.floats(allow_nan=True))
def test_floats_bit_exact(a, b):
    data = encoding.pack({"a": a, "b": [b]})
    assert encoding.pack(encoding.unpack(data)) == data
