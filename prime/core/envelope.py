"""Signed envelopes: the one wire format for every record a node signs.

An envelope is ``{d: domain, s: signer public key, p: canonical payload bytes,
g: signature}``. The signature covers SHA-256 of ``"prime-v1" | domain | payload``,
so a record signed for one purpose (say an update) can never be replayed as
another (say an announcement): that is the domain separation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

from prime.core import encoding
from prime.core.errors import DecodeError, SignatureError
from prime.core.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify

_PREFIX = b"prime-v1\x00"


class Domain(str, Enum):
    """What a signed record is for. Part of the signed bytes."""

    ANNOUNCEMENT = "announce"
    COMMITTED = "committed"
    STANDBY = "standby"
    UPDATE = "update"
    HEARTBEAT = "heartbeat"
    LEDGER = "ledger"
    DHT_RECORD = "dht"
    BUDGET = "budget"


def signing_digest(domain: str, payload: bytes) -> bytes:
    """The 32 bytes actually signed: domain-separated hash of the payload."""
    h = hashlib.sha256(_PREFIX)
    h.update(domain.encode())
    h.update(b"\x00")
    h.update(payload)
    return h.digest()


@dataclass(frozen=True)
class Envelope:
    """A verified (or freshly signed) record: who signed what, for which domain."""

    domain: str
    signer: bytes
    payload: bytes
    signature: bytes

    @property
    def record(self) -> Any:
        return encoding.unpack(self.payload)

    def to_bytes(self) -> bytes:
        return encoding.pack({"d": self.domain, "s": self.signer, "p": self.payload, "g": self.signature})


def seal(identity: Identity, domain: Domain | str, record: Any) -> Envelope:
    """Sign ``record`` (canonically encoded) for ``domain`` with ``identity``."""
    domain_str = domain.value if isinstance(domain, Domain) else domain
    payload = encoding.pack(record)
    signature = identity.sign(signing_digest(domain_str, payload))
    return Envelope(domain_str, identity.public_key, payload, signature)


def open_envelope(
    data: bytes,
    domain: Domain | str,
    *,
    signer: bytes | None = None,
    max_bytes: int = encoding.MAX_RECORD_BYTES,
) -> Envelope:
    """Decode and verify an envelope; raise ``DecodeError``/``SignatureError`` otherwise.

    ``signer`` pins the expected public key (for example the coordinator's).
    """
    obj = encoding.unpack(data, max_bytes=max_bytes)
    if not isinstance(obj, dict) or set(obj) != {"d", "s", "p", "g"}:
        raise DecodeError("not a signed envelope")
    d, s, p, g = obj["d"], obj["s"], obj["p"], obj["g"]
    if not (isinstance(d, str) and isinstance(s, bytes) and isinstance(p, bytes) and isinstance(g, bytes)):
        raise DecodeError("envelope fields have wrong types")
    if len(s) != PUBLIC_KEY_BYTES or len(g) != SIGNATURE_BYTES:
        raise DecodeError("envelope signer or signature has wrong length")
    expected = domain.value if isinstance(domain, Domain) else domain
    if d != expected:
        raise SignatureError(f"record is for domain {d!r}, expected {expected!r}")
    if signer is not None and s != signer:
        raise SignatureError("record signed by an unexpected key")
    verify(s, signing_digest(d, p), g)
    return Envelope(d, s, p, g)
