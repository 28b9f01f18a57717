"""One exception tree for prime: catch ``PrimeError`` to catch anything prime raises.

Each subsystem has its own branch so callers can tell a bad config file from a
forged record from an unreachable peer. Messages say what was wrong, where, and
what to do about it.
"""

from __future__ import annotations


class PrimeError(Exception):
    """Root of every error prime raises on purpose."""


class ConfigError(PrimeError):
    """A config file is missing, unreadable, or has an unknown key or a wrong type."""


class DecodeError(PrimeError):
    """Bytes from the network or disk are not a well-formed prime message."""


class SignatureError(DecodeError):
    """A signed record's signature, signer or domain does not check out."""


class IdentityError(PrimeError):
    """A node key file is missing, unreadable or has unsafe permissions."""


class DHTError(PrimeError):
    """A DHT operation failed: record too large, no peers, lookup failed."""


class BlobError(PrimeError):
    """A blob could not be stored, served or fetched (size cap, digest mismatch, peer gone).

    ``reason`` is ``"tampered"`` (bytes did not match the digest), ``"oversize"`` (over the
    cap) or ``"unavailable"`` (anything else: not found, stalled, connection lost)."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class BusError(PrimeError):
    """The MQTT control plane is unreachable or refused us."""


class TrainerError(PrimeError):
    """The trainer cannot proceed (bad model, no data, no checkpoint of that name)."""


class CoordinatorError(PrimeError):
    """The coordinator cannot proceed (corrupt state, bad job config)."""


class UpdateRejected(PrimeError):
    """An update failed verification; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = str(reason)  # a prime.core.refusals.Refusal, stored as its plain string
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class TaskError(PrimeError):
    """A task cannot be resolved (unknown name, entry point that fails to import) or its data
    cannot be read (the message names the file)."""


class AuditError(PrimeError):
    """An audit log cannot be written, or does not verify (the message names the first bad line)."""


class StateKeyError(PrimeError):
    """The state key and the state on disk do not go together (no key for sealed state, a key
    for unsealed state, another key), or a key file is unusable. Fatal: nothing is modified."""


class SealedFileError(DecodeError):
    """A sealed state file fails its MAC, is truncated or malformed: skip it for an older one."""
