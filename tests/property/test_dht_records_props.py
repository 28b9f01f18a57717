"""validate_record on hostile bytes raises prime's DecodeError (or subclasses) and nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core.errors import DecodeError
from prime.core.identity import Identity
from prime.dht.records import dht_digest, dht_key, make_record, validate_record

NOW = 1_700_000_000.0
OWNER = Identity.from_seed(b"p" * 32)
NAME = "job-7/update/1"
DKEY = dht_digest(dht_key(OWNER.public_key, NAME))
VALID = make_record(OWNER, NAME, {"digest": "cd" * 32, "size": 12, "providers": [["127.0.0.1", 9000]]}, 600, now=NOW)


def only_decode_errors(dkey: bytes, data: bytes) -> None:
    try:
        validate_record(dkey, data, NOW, 3600.0)
    except DecodeError:
        pass


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        else:
            data[i : i + 8] = draw(st.binary(max_size=8))
    return bytes(data)


def test_valid_record_passes() -> None:
    assert validate_record(DKEY, VALID, NOW, 3600.0).value["size"] == 12


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=10_000), st.binary(min_size=20, max_size=20))
def test_random_bytes_raise_only_decode_error(data: bytes, dkey: bytes) -> None:
    only_decode_errors(dkey, data)


@settings(max_examples=400, deadline=None)
@given(mutations())
def test_mutated_record_is_refused_with_decode_error(data: bytes) -> None:
    if data == VALID:
        return
    try:
        validate_record(DKEY, data, NOW, 3600.0)
    except DecodeError:
        return
    raise AssertionError("a mutated record validated")
