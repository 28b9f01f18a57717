"""Parcels: a signed record with its small blob inline, or a bare envelope."""

from __future__ import annotations

import pytest

from prime.core import encoding, parcel
from prime.core.envelope import Domain, seal
from prime.core.errors import DecodeError
from prime.core.identity import Identity

SIGNED = seal(Identity.from_seed(b"p" * 32), Domain.UPDATE, {"round": 1}).to_bytes()


def test_a_parcel_carries_the_envelope_and_the_blob():
    assert parcel.unpack(parcel.pack(SIGNED, b"\x00blob\xff"), max_blob_bytes=16) == (SIGNED, b"\x00blob\xff")


def test_a_bare_envelope_is_a_parcel_without_a_blob():
    assert parcel.pack(SIGNED) == SIGNED
    assert parcel.unpack(SIGNED, max_blob_bytes=16) == (SIGNED, None)


def test_an_inline_blob_over_the_limit_is_refused():
    with pytest.raises(DecodeError, match="exceeds the 4-byte limit"):
        parcel.unpack(parcel.pack(SIGNED, b"12345"), max_blob_bytes=4)


def test_a_parcel_over_the_bound_is_refused_before_decoding():
    huge = parcel.pack(SIGNED, b"x" * (parcel.max_parcel_bytes(16) + 1))
    with pytest.raises(DecodeError, match="exceeds"):
        parcel.unpack(huge, max_blob_bytes=16)


@pytest.mark.parametrize("obj", [
    {"e": SIGNED},  # no blob field
    {"e": SIGNED, "b": "text"},  # wrong type
    {"e": 1, "b": b""},
    {"e": SIGNED, "b": b"", "x": b""},  # extra field
    [SIGNED, b""],
])
def test_malformed_parcels_are_refused(obj):
    with pytest.raises(DecodeError):
        parcel.unpack(encoding.pack(obj), max_blob_bytes=16)
