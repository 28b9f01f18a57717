"""The sealed-file decoder: hostile or damaged bytes give SealedFileError or StateKeyError, never
anything else, and never plaintext other than what was sealed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core.errors import SealedFileError, StateKeyError
from prime.sealing import HEADER_BYTES, MAGIC, Sealer, StateKey

KEY = StateKey(bytes(32), "test key")
PLAIN = b"PK\x03\x04 checkpoint bytes " * 8
SEALED = Sealer(KEY).seal(PLAIN)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=100).map(lambda b: MAGIC + bytes([1]) + b))
def test_arbitrary_bytes(data):
    try:
        out = Sealer(KEY).open(data, "f")
    except (SealedFileError, StateKeyError):
        return
    raise AssertionError(f"opened junk into {out!r}")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SEALED) - 1), st.integers(1, 255), st.integers(0, len(SEALED)),
       st.binary(max_size=8))
def test_mutated_sealed_file(i, flip, cut, tail):
    data = bytearray(SEALED)
    data[i] ^= flip
    data = bytes(data[: len(data) - cut]) + tail
    if data == SEALED:  # the cut took the flipped byte and the tail put the original back
        assert Sealer(KEY).open(data, "f") == PLAIN
        return
    try:
        out = Sealer(KEY).open(data, "f")
    except (SealedFileError, StateKeyError):
        return
    raise AssertionError(f"a damaged file opened ({len(out)} bytes)")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_round_trip(plain):
    sealer = Sealer(KEY)
    sealed = sealer.seal(plain)
    assert len(sealed) >= HEADER_BYTES and sealer.open(sealed, "f") == plain
