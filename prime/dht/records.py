"""Signed pointer records: the only values a prime DHT node will store or return.

A record is a :class:`~prime.core.envelope.Envelope` (domain ``DHT_RECORD``) whose
payload is ``{"key", "value", "issued", "expires"}``. The key string
``prime/<owner public key hex>/<name>`` names its owner, and only a record signed by
that owner is valid, so nobody can write under someone else's key. Records are tiny
(pointers to blobs, never the blobs), bounded in size and lifetime.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import umsgpack

from prime.core import encoding
from prime.core.envelope import Domain, open_envelope, seal
from prime.core.errors import DecodeError, DHTError, SignatureError
from prime.core.identity import PUBLIC_KEY_BYTES, Identity

#: rpcudp refuses (raises ``MalformedMessage``) any request whose packed
#: ``[name, args]`` exceeds this many bytes.
RPC_MAX_BYTES = 8192


def _store_rpc_overhead() -> int:
    """Bytes a STORE request adds around the value: ``["store", [nodeid, dkey, value]]``.

    Measured with the very encoder rpcudp uses, for a value in the bin16 range
    (256..65535 bytes), which is where every near-cap record falls.
    """
    probe = 1024
    return len(umsgpack.packb(["store", [bytes(20), bytes(20), bytes(probe)]])) - probe


#: Largest record (envelope bytes) that still fits one STORE RPC: 8192 - 55 = 8137.
MAX_DHT_RECORD_BYTES = RPC_MAX_BYTES - _store_rpc_overhead()

#: How far a peer's clock may run ahead of ours before its records look forged.
DEFAULT_MAX_SKEW_S = 60.0

KEY_PREFIX = "prime"
MAX_NAME_CHARS = 200
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_KEY_RE = re.compile(KEY_PREFIX + r"/([0-9a-f]{64})/(.+)", re.DOTALL)
_PAYLOAD_FIELDS = {"key", "value", "issued", "expires"}


class InvalidRecord(DecodeError):
    """A DHT record was refused; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ForgedRecord(InvalidRecord, SignatureError):
    """A DHT record's signature or signer does not match the owner its key names."""


@dataclass(frozen=True)
class DHTRecord:
    """A verified record: who owns it, what it says, and for how long."""

    key: str
    owner: bytes
    value: dict[str, Any]
    issued: float
    expires: float
    raw: bytes

    @property
    def name(self) -> str:
        return self.key.split("/", 2)[2]

    @property
    def dkey(self) -> bytes:
        return dht_digest(self.key)

    def newer_than(self, other: "DHTRecord") -> bool:
        """Total order so every node keeps the same version: issued, then bytes."""
        return (self.issued, self.raw) > (other.issued, other.raw)


def valid_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_CHARS and _NAME_RE.fullmatch(name) is not None


def dht_key(owner: bytes, name: str) -> str:
    """The DHT key string under which ``owner`` publishes ``name`` (``job-1/update/3``)."""
    if not isinstance(owner, bytes) or len(owner) != PUBLIC_KEY_BYTES:
        raise DHTError(f"owner must be a {PUBLIC_KEY_BYTES}-byte public key")
    if not valid_name(name):
        raise DHTError(
            f"bad record name {name!r}: use up to {MAX_NAME_CHARS} chars of "
            "[A-Za-z0-9_.-] segments joined by '/', e.g. 'job-1/update/3'"
        )
    return f"{KEY_PREFIX}/{owner.hex()}/{name}"


def dht_digest(key: str) -> bytes:
    """The 20-byte Kademlia id of a key string (what ``kademlia`` calls ``dkey``)."""
    return hashlib.sha1(key.encode()).digest()


def make_record(
    identity: Identity, name: str, value: dict[str, Any], ttl_s: float, now: float | None = None
) -> bytes:
    """Sign ``value`` under ``identity``'s key for ``ttl_s`` seconds; raise ``DHTError`` if unfit."""
    if not isinstance(value, dict):
        raise DHTError(f"record value must be a dict, got {type(value).__name__}")
    if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
        raise DHTError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    key = dht_key(identity.public_key, name)
    issued = float(time.time() if now is None else now)
    payload = {"key": key, "value": value, "issued": issued, "expires": issued + float(ttl_s)}
    try:
        raw = seal(identity, Domain.DHT_RECORD, payload).to_bytes()
    except TypeError as exc:
        raise DHTError(f"record value for {name!r} is not encodable: {exc}") from None
    if len(raw) > MAX_DHT_RECORD_BYTES:
        raise DHTError(
            f"record {name!r} is {len(raw)} bytes, over the {MAX_DHT_RECORD_BYTES}-byte DHT limit "
            "(one UDP RPC); put the data in a blob and store its digest instead"
        )
    return raw


def validate_record(
    dkey: bytes,
    data: object,
    now: float,
    max_ttl_s: float,
    *,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> DHTRecord:
    """Check everything about a record received for ``dkey``; raise ``InvalidRecord`` if anything is off."""
    if not isinstance(data, bytes):
        raise InvalidRecord("not_bytes", type(data).__name__)
    if len(data) > MAX_DHT_RECORD_BYTES:
        raise InvalidRecord("oversize", f"{len(data)} > {MAX_DHT_RECORD_BYTES} bytes")
    try:
        envelope = open_envelope(data, Domain.DHT_RECORD, max_bytes=MAX_DHT_RECORD_BYTES)
    except SignatureError as exc:
        raise ForgedRecord("bad_signature", str(exc)) from None
    except DecodeError as exc:
        raise InvalidRecord("bad_envelope", str(exc)) from None
    try:
        payload = encoding.unpack(envelope.payload, max_bytes=MAX_DHT_RECORD_BYTES)
    except DecodeError as exc:
        raise InvalidRecord("bad_payload", str(exc)) from None
    if not isinstance(payload, dict) or set(payload) != _PAYLOAD_FIELDS:
        raise InvalidRecord("bad_payload", "payload is not {key, value, issued, expires}")
    key, value, issued, expires = payload["key"], payload["value"], payload["issued"], payload["expires"]
    if not isinstance(value, dict) or not all(_is_time(t) for t in (issued, expires)):
        raise InvalidRecord("bad_payload", "value must be a map, issued/expires finite numbers")
    if not isinstance(key, str) or dht_digest(key) != dkey:
        raise InvalidRecord("key_mismatch", "sha1(key) differs from the DHT id it was stored under")
    match = _KEY_RE.fullmatch(key)
    if match is None or not valid_name(match.group(2)):
        raise InvalidRecord("bad_key", f"{key[:80]!r} is not prime/<owner hex>/<name>")
    owner = bytes.fromhex(match.group(1))
    if owner != envelope.signer:
        raise ForgedRecord("wrong_owner", "signed by a key other than the owner named in the key")
    if expires <= issued:
        raise InvalidRecord("bad_payload", "expires before it was issued")
    if expires <= now:
        raise InvalidRecord("expired", f"expired {now - expires:.1f}s ago")
    if issued > now + max_skew_s:
        raise InvalidRecord("issued_in_future", f"issued {issued - now:.1f}s from now")
    if expires > now + max_ttl_s + max_skew_s:
        raise InvalidRecord("ttl_too_long", f"expires in {expires - now:.0f}s > {max_ttl_s:.0f}s")
    return DHTRecord(key, owner, value, float(issued), float(expires), data)


def _is_time(t: object) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
