"""Node identity: one Ed25519 key per node, kept in the node's data dir.

The key file is created once with mode 0600 and reused on every restart, so a
node keeps its identity (and its rewards) across crashes. The network id is
derived from the public key; ``--node-id`` is only a human-readable name.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from prime.core.errors import IdentityError, SignatureError

KEY_FILE = "node.key"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def network_id(public_key: bytes) -> str:
    """Stable short id of a public key: first 16 hex chars of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise ``SignatureError`` unless ``signature`` over ``message`` is ``public_key``'s."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise SignatureError("malformed public key or signature length")
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError) as exc:
        raise SignatureError(f"bad signature from {network_id(public_key)}: {exc}") from None


@dataclass(frozen=True)
class Identity:
    """A node's signing key plus the names derived from it."""

    signing_key: SigningKey
    name: str = ""

    @classmethod
    def generate(cls, name: str = "") -> "Identity":
        return cls(SigningKey.generate(), name)

    @classmethod
    def from_seed(cls, seed: bytes, name: str = "") -> "Identity":
        return cls(SigningKey(seed), name)

    @classmethod
    def load_or_create(cls, data_dir: str | os.PathLike, name: str = "") -> "Identity":
        """Load ``data_dir/node.key``, creating it (mode 0600, atomically) if absent."""
        path = Path(data_dir) / KEY_FILE
        if path.exists():
            return cls.load(path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        identity = cls.generate(name)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # a stale temp file could carry wider permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, identity.signing_key.encode().hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return identity

    @classmethod
    def load(cls, path: str | os.PathLike, name: str = "") -> "Identity":
        path = Path(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text().strip()
        except OSError as exc:
            raise IdentityError(f"cannot read key file {path}: {exc}") from None
        except UnicodeDecodeError:
            raise IdentityError(f"key file {path} is not a hex Ed25519 seed (binary content)") from None
        if mode & 0o077:
            raise IdentityError(
                f"key file {path} has mode {mode:o}; it must be private: chmod 600 {path}"
            )
        try:
            seed = bytes.fromhex(text)
            if len(seed) != 32:
                raise ValueError("need 32 bytes")
        except ValueError as exc:
            raise IdentityError(f"key file {path} is not a 64-hex-digit Ed25519 seed: {exc}") from None
        return cls.from_seed(seed, name)

    @property
    def public_key(self) -> bytes:
        return self.signing_key.verify_key.encode()

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    @property
    def network_id(self) -> str:
        return network_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature
