"""Canonical, bounded msgpack encoding for every record prime signs or sends.

Canonical means: the same record always encodes to the same bytes (map keys sorted,
no floats where ints would do is the caller's job), so a signature over the bytes is
a signature over the record. Bounded means: decoding refuses inputs that would make
us allocate without limit, and raises only ``DecodeError``.
"""

from __future__ import annotations

from typing import Any

import msgpack

from prime.core.errors import DecodeError

#: Largest encoded record prime will decode. DHT records must fit a UDP datagram;
#: bus payloads and blob headers are small too.
MAX_RECORD_BYTES = 64 * 1024
_MAX_ITEMS = 4096


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"record keys must be str, got {type(key).__name__}")
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise TypeError(f"cannot canonically encode {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """Encode ``obj`` (dicts with str keys, lists, scalars, bytes) canonically."""
    return msgpack.packb(_canonical(obj), use_bin_type=True)


def unpack(data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Decode bytes produced by :func:`pack`, refusing anything oversized or malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"record of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=_MAX_ITEMS,
            max_map_len=_MAX_ITEMS,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    except Exception as exc:  # msgpack raises a few undocumented types on garbage
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
