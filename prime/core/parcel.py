"""Parcels: one bus message carrying a signed record and, when it is small, the blob it names.

Models and updates travel as content-addressed blobs fetched over TCP. For a small blob
that fetch (a connection, a request, a file written and read back on each side) costs
far more than its bytes, and it sits on every round's critical path twice: trainers
fetch the model, the coordinator fetches each update. So the coordinator's announcement
and a trainer's update notice carry the blob inline when it is at most
``network.inline_blob_max_bytes``.

Nothing in a parcel is trusted for being there: the record is verified as always, and
an inline blob is used only if it hashes to the digest the record signs (otherwise it
is ignored and the blob is fetched as usual). The DHT keeps the bare record; the fetch
path stays for large blobs, late joiners and recovery.

Format: canonical msgpack ``{"e": envelope bytes, "b": blob bytes}``. A bare envelope
(``{d, s, p, g}``) is a parcel without a blob, so senders that never inline interoperate.
"""

from __future__ import annotations

from prime.core import encoding
from prime.core.errors import DecodeError
from prime.core.offload import run_sized
from prime.core.tensors import digest

#: The parcel's own keys and msgpack framing, on top of the envelope and the blob.
_FRAMING_BYTES = 64


def max_parcel_bytes(max_blob_bytes: int) -> int:
    """Largest parcel a receiver accepts: a whole record plus an inline blob."""
    return encoding.MAX_RECORD_BYTES + max_blob_bytes + _FRAMING_BYTES


def pack(envelope: bytes, blob: bytes | None = None) -> bytes:
    """The bus payload for ``envelope`` (signed record bytes), with ``blob`` inline if given."""
    if blob is None:
        return envelope
    return encoding.pack({"e": envelope, "b": bytes(blob)})


async def is_signed_blob(blob: bytes, signed_digest: str, signed_size: int) -> bool:
    """Whether an inline blob is the one its record signs (hashed off the loop if large)."""
    return len(blob) == signed_size and await run_sized(len(blob), digest, blob) == signed_digest


def unpack(data: bytes, *, max_blob_bytes: int) -> tuple[bytes, bytes | None]:
    """Split a bus payload into (envelope bytes, inline blob or None); ``DecodeError`` on junk.

    The envelope itself is not verified here: that is the record type's ``open``.
    """
    obj = encoding.unpack(data, max_bytes=max_parcel_bytes(max_blob_bytes))
    if isinstance(obj, dict) and set(obj) == {"d", "s", "p", "g"}:
        return bytes(data), None  # a bare envelope
    if not isinstance(obj, dict) or set(obj) != {"e", "b"}:
        raise DecodeError("not a parcel or a signed envelope")
    envelope, blob = obj["e"], obj["b"]
    if not isinstance(envelope, bytes) or not isinstance(blob, bytes):
        raise DecodeError("parcel fields have wrong types")
    if len(envelope) > encoding.MAX_RECORD_BYTES:
        raise DecodeError(f"parcel record of {len(envelope)} bytes exceeds {encoding.MAX_RECORD_BYTES}")
    if len(blob) > max_blob_bytes:
        raise DecodeError(f"inline blob of {len(blob)} bytes exceeds the {max_blob_bytes}-byte limit")
    return envelope, blob
