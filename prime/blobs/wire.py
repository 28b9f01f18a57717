"""Blob service wire format: one request, one header, then raw bytes.

Frames are ``4-byte big-endian length | canonical msgpack``, each at most
:data:`MAX_FRAME_BYTES`:

    client -> server   {"digest": <64 hex>}
    server -> client   {"status": "ok"|"not_found"|"bad_request"|"too_large", "size": int}
                       then, if ok, exactly ``size`` raw bytes

Pure encode/decode (property-tested) plus the one bounded async frame read both sides use.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from typing import Any

from prime.core import encoding
from prime.core.errors import DecodeError
from prime.blobs.store import check_digest, is_digest

log = logging.getLogger(__name__)

#: The client hashes a received body in segments of this much while the rest arrives.
HASH_SEGMENT_BYTES = 4 * 1024 * 1024
#: The server hands the kernel this much per ``sendfile``; a client must take each within ``timeout``.
SEND_SEGMENT_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 256
DEFAULT_MAX_BLOB_BYTES = 1024**3
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_CLIENTS = 64
LEN_BYTES = 4

Address = tuple[str, int]


class BlobStatus(str, Enum):
    OK = "ok"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"


class MalformedFrame(DecodeError):
    """A request or header frame is not what the protocol allows; ``reason`` says how."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


# -- framing (pure; property-tested) ------------------------------------------------


def encode_frame(obj: Any) -> bytes:
    body = encoding.pack(obj)
    return len(body).to_bytes(LEN_BYTES, "big") + body


def frame_length(prefix: bytes) -> int:
    """Body length from a 4-byte prefix; refuse empty or oversized frames before reading them."""
    if len(prefix) != LEN_BYTES:
        raise MalformedFrame("truncated", "length prefix cut short")
    length = int.from_bytes(prefix, "big")
    if not 0 < length <= MAX_FRAME_BYTES:
        raise MalformedFrame("oversize", f"frame of {length} bytes; limit {MAX_FRAME_BYTES}")
    return length


def encode_request(digest: str) -> bytes:
    return encode_frame({"digest": check_digest(digest)})


def decode_request(body: bytes) -> str:
    """The digest a request body asks for; raise ``DecodeError`` if it is anything else."""
    obj = encoding.unpack(body, max_bytes=MAX_FRAME_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"digest"}:
        raise MalformedFrame("bad_shape", "request must be {digest}")
    if not is_digest(obj["digest"]):
        raise MalformedFrame("bad_digest", "digest must be 64 lowercase hex chars")
    return obj["digest"]


def decode_response_header(body: bytes) -> tuple[BlobStatus, int]:
    obj = encoding.unpack(body, max_bytes=MAX_FRAME_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"status", "size"}:
        raise MalformedFrame("bad_shape", "header must be {status, size}")
    status, size = obj["status"], obj["size"]
    if not isinstance(status, str) or status not in {s.value for s in BlobStatus}:
        raise MalformedFrame("bad_status", repr(status)[:40])
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedFrame("bad_size", repr(size)[:40])
    return BlobStatus(status), size


async def read_frame(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Read one frame body; raises ``MalformedFrame``, ``TimeoutError`` or ``IncompleteReadError``."""
    async with asyncio.timeout(timeout):
        length = frame_length(await reader.readexactly(LEN_BYTES))
        return await reader.readexactly(length)
