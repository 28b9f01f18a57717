"""Canonical bounded msgpack."""

from __future__ import annotations

import msgpack
import pytest

from prime.core import encoding
from prime.core.errors import DecodeError


def test_dict_order_does_not_change_bytes():
    a = {"b": 1, "a": [1, {"y": b"\x00", "x": None}], "c": {"z": True, "m": 1.5}}
    b = {"c": {"m": 1.5, "z": True}, "a": [1, {"x": None, "y": b"\x00"}], "b": 1}
    assert encoding.pack(a) == encoding.pack(b)
    assert encoding.unpack(encoding.pack(a)) == a


def test_round_trip_types():
    obj = {"s": "héllo", "b": b"\x00\xff", "i": -(2**63), "u": 2**64 - 1, "f": 0.1, "n": None,
           "t": True, "l": [1, "x", [b"y"]], "tuple": (1, 2)}
    out = encoding.unpack(encoding.pack(obj))
    assert out == {**obj, "tuple": [1, 2]}
    assert isinstance(out["b"], bytes) and isinstance(out["s"], str)


@pytest.mark.parametrize("key", [1, b"bytes", 1.5, None, (1,)])
def test_non_str_keys_refused(key):
    with pytest.raises(TypeError, match="keys must be str"):
        encoding.pack({key: 1})
    with pytest.raises(TypeError):
        encoding.pack({"outer": [{key: 1}]})


@pytest.mark.parametrize("value", [object(), {1, 2}, bytearray(b"x")])
def test_unencodable_values_refused(value):
    with pytest.raises(TypeError):
        encoding.pack({"v": value})


def test_oversize_refused():
    data = encoding.pack({"blob": b"x" * 100})
    with pytest.raises(DecodeError, match="exceeds"):
        encoding.unpack(data, max_bytes=50)
    assert encoding.unpack(data, max_bytes=len(data))["blob"] == b"x" * 100
    big = encoding.pack(b"x" * encoding.MAX_RECORD_BYTES)
    with pytest.raises(DecodeError):
        encoding.unpack(big)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x92\x01",  # truncated array
        encoding.pack(1) + b"\x00",  # trailing data
        b"\xd9\x02\xff\xfe",  # invalid utf-8 str
        b"\x81\x01\x02",  # int map key (strict_map_key)
        b"\xd4\x01\x00",  # ext type
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G items
        b"\xdf\xff\xff\xff\xff",  # map claiming 4G items
        b"\xc6\xff\xff\xff\xff",  # bin claiming 4GiB
        b"\x91" * 5000,  # deep nesting
    ],
)
def test_malformed_raises_decode_error(data):
    with pytest.raises(DecodeError):
        encoding.unpack(data)


def test_too_many_items_refused():
    data = msgpack.packb(list(range(encoding._MAX_ITEMS + 1)))
    assert len(data) < encoding.MAX_RECORD_BYTES
    with pytest.raises(DecodeError):
        encoding.unpack(data)


@pytest.mark.parametrize("value", ["str", 1, None, [b"x"]])
def test_non_bytes_input_refused(value):
    with pytest.raises(DecodeError, match="expected bytes"):
        encoding.unpack(value)  # type: ignore[arg-type]


def test_memoryview_and_bytearray_accepted():
    data = encoding.pack({"a": 1})
    assert encoding.unpack(memoryview(data)) == {"a": 1}
    assert encoding.unpack(bytearray(data)) == {"a": 1}
