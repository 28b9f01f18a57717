"""Blob request and response headers: hostile bytes raise DecodeError and nothing else."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core import encoding
from prime.core.errors import DecodeError
from prime.blobs.wire import decode_request, decode_response_header, encode_request, frame_length

DIGEST = hashlib.sha256(b"x").hexdigest()
REQUEST_BODY = encode_request(DIGEST)[4:]
HEADER_BODY = encoding.pack({"status": "ok", "size": 123})

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=70) | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["digest", "status", "size"]) | st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def mutate(body: bytes, i: int, b: int, cut: int) -> bytes:
    data = bytearray(body)
    data[i % len(data)] ^= b
    return bytes(data[: len(data) - cut])


def test_round_trip() -> None:
    assert decode_request(REQUEST_BODY) == DIGEST
    assert decode_response_header(HEADER_BODY)[1] == 123


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    for decode in (decode_request, decode_response_header):
        try:
            decode(data)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_wrong_shapes(value: object) -> None:
    data = encoding.pack(value)
    for decode in (decode_request, decode_response_header):
        try:
            decode(data)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255), st.integers(0, 10))
def test_mutated_headers(i: int, b: int, cut: int) -> None:
    for body, decode in ((REQUEST_BODY, decode_request), (HEADER_BODY, decode_response_header)):
        try:
            decode(mutate(body, i, b, cut))
        except DecodeError:
            pass


@given(st.binary(max_size=6))
def test_frame_length(prefix: bytes) -> None:
    try:
        assert 0 < frame_length(prefix) <= 256
    except DecodeError:
        pass
