"""Encrypted state at rest: NaCl SecretBox over whole files, with a key from a 0600 file or the env.

A sealed file is ``MAGIC`` (8 bytes), a format version (1 byte), the key's id (8 bytes: a keyed
BLAKE2b of the key, so a wrong key is told apart from a damaged file without trying to decrypt),
a random 24-byte nonce, then the SecretBox ciphertext (16-byte Poly1305 MAC + the bytes). What a
caller gets back from :meth:`Sealer.open` has passed the MAC; nothing else is returned.

Two kinds of failure, on purpose:

* :class:`StateKeyError` (fatal, nothing modified): the file is sealed with another key, sealed
  but no key is set, or not sealed while a key is set. A wrong key must never make a node fall
  back silently to older state or start afresh.
* :class:`SealedFileError` (skip it): the MAC fails, or the file is truncated or malformed.
  Callers skip such a file for the previous good one and count it (``Sealer.counts``).

No key configured: :meth:`Sealer.seal` returns the bytes as they are, exactly today's plaintext.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nacl.secret
import nacl.utils
from nacl._sodium import ffi, lib  # libsodium through PyNaCl: SecretBox straight into our buffers

from prime.core.errors import SealedFileError, StateKeyError

MAGIC = b"PRIMSEAL"
VERSION = 1
KEY_ID_BYTES = 8
NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE  # 24
MAC_BYTES = nacl.secret.SecretBox.MACBYTES  # 16
HEADER_BYTES = len(MAGIC) + 1 + KEY_ID_BYTES + NONCE_BYTES
KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE  # 32
#: The environment variable a state key may come from (64 hex digits), when no key file is given.
ENV_VAR = "PRIME_STATE_KEY"
#: What the operator is told to do when a key is missing or wrong.
HOW_TO_GIVE = f"--state-key-file FILE (0600, from `prime state keygen`) or {ENV_VAR}=64 hex digits"


@dataclass(frozen=True)
class StateKey:
    """A 32-byte SecretBox key and where it came from (for messages; never the key itself)."""

    secret: bytes
    source: str

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise StateKeyError(f"{self.source}: a state key is {KEY_BYTES} bytes (64 hex digits)")

    @property
    def key_id(self) -> bytes:
        """Public fingerprint written in every sealed file: tells a wrong key from a damaged file."""
        return hashlib.blake2b(b"prime/state-key-id", key=self.secret, digest_size=KEY_ID_BYTES).digest()

    def __repr__(self) -> str:  # never print the secret
        return f"StateKey(id={self.key_id.hex()}, source={self.source!r})"

    @classmethod
    def generate(cls, source: str = "new key") -> "StateKey":
        return cls(nacl.utils.random(KEY_BYTES), source)


def _parse_hex(text: str, source: str) -> StateKey:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise StateKeyError(f"{source}: a state key is 64 hex digits ({KEY_BYTES} bytes); "
                            "`prime state keygen --out FILE` writes one")
    return StateKey(secret, source)


def load_key_file(path: str | os.PathLike) -> StateKey:
    """A key file: 64 hex digits, private to its owner (mode 0600), else a clear error."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise StateKeyError(f"state key file {path} does not exist; `prime state keygen --out {path}` "
                            "makes one") from None
    except OSError as exc:
        raise StateKeyError(f"cannot read state key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StateKeyError(f"state key file {path} is not 64 hex digits (binary content)") from None
    if mode & 0o077:
        raise StateKeyError(f"state key file {path} has mode {mode:o}: it must be private to its owner; "
                            f"run chmod 600 {path}")
    return _parse_hex(text, f"state key file {path}")


def resolve_state_key(key_file: str | os.PathLike | None,
                      environ: Mapping[str, str] | None = None) -> StateKey | None:
    """The key from ``key_file`` if given, else from ``PRIME_STATE_KEY``, else None (no sealing)."""
    if key_file is not None:
        return load_key_file(key_file)
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return _parse_hex(value, f"environment variable {ENV_VAR}") if value.strip() else None


def write_key_file(path: str | os.PathLike, key: StateKey | None = None) -> StateKey:
    """Create ``path`` (mode 0600, refusing to overwrite) holding a new key (or ``key``)."""
    path = Path(path)
    key = key or StateKey.generate(f"state key file {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StateKeyError(f"{path} exists; a key file is never overwritten (choose another path)") from None
    try:
        os.write(fd, key.secret.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return StateKey(key.secret, f"state key file {path}")


# -- the sealed-file format -------------------------------------------------------------
def looks_sealed(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is (or, cut short, could have been) a sealed file. An empty or shorter-than-
    magic file counts as sealed: truncation must read as damage, never as plaintext."""
    head = bytes(data[: len(MAGIC)])
    return MAGIC.startswith(head) if len(head) < len(MAGIC) else head == MAGIC


def sealed_key_id(data: bytes | bytearray | memoryview) -> bytes | None:
    """The key id of a sealed file's header, or None if it is too short to have one."""
    if len(data) < len(MAGIC) + 1 + KEY_ID_BYTES or not looks_sealed(data):
        return None
    return bytes(data[len(MAGIC) + 1: len(MAGIC) + 1 + KEY_ID_BYTES])


def seal_bytes(key: StateKey, plaintext: bytes | bytearray | memoryview) -> bytearray:
    """Header, then SecretBox's MAC and ciphertext (``crypto_secretbox_easy``) written in place:
    one pass over the bytes, one allocation."""
    nonce = nacl.utils.random(NONCE_BYTES)
    out = bytearray(HEADER_BYTES + MAC_BYTES + len(plaintext))
    out[:HEADER_BYTES] = MAGIC + bytes([VERSION]) + key.key_id + nonce
    message = ffi.from_buffer(plaintext) if len(plaintext) else ffi.NULL
    target = ffi.from_buffer("unsigned char[]", out, require_writable=True) + HEADER_BYTES
    if lib.crypto_secretbox_easy(target, message, len(plaintext), nonce, key.secret) != 0:
        raise StateKeyError("sealing failed in libsodium")  # cannot happen with a 32-byte key
    return out


def _not_sealed(key: StateKey, where: str) -> StateKeyError:
    return StateKeyError(f"{where} is not sealed, but a state key is set ({key.source}); seal existing "
                         "state first: prime state rotate-key --data-dir DIR --new-key-file FILE")


def _other_key(key: StateKey, where: str, key_id: bytes) -> StateKeyError:
    return StateKeyError(f"{where} is sealed with another state key (key id {key_id.hex()}); "
                         f"{key.source} has key id {key.key_id.hex()}. Give the key it was sealed with "
                         "(if a key rotation was interrupted, run it again); nothing was changed")


def open_bytes(key: StateKey, data: bytes | bytearray | memoryview, where: str,
               max_bytes: int = 1 << 40) -> bytearray:
    """The plaintext of a sealed file, or an error naming ``where``; bounded before any work."""
    if len(data) > max_bytes:
        raise SealedFileError(f"{where}: {len(data)} bytes is over the {max_bytes}-byte limit")
    if len(data) >= len(MAGIC) and not looks_sealed(data):
        raise _not_sealed(key, where)
    if len(data) < HEADER_BYTES + MAC_BYTES:
        raise SealedFileError(f"{where}: sealed file truncated ({len(data)} bytes, the header and MAC "
                              f"alone are {HEADER_BYTES + MAC_BYTES})")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise SealedFileError(f"{where}: sealed-file format version {version} is not supported (this prime "
                              f"reads version {VERSION})")
    key_id = sealed_key_id(data)
    if key_id != key.key_id:
        raise _other_key(key, where, key_id)
    nonce = bytes(data[len(MAGIC) + 1 + KEY_ID_BYTES: HEADER_BYTES])
    size = len(data) - HEADER_BYTES - MAC_BYTES
    out = bytearray(size)
    target = ffi.from_buffer("unsigned char[]", out, require_writable=True) if size else ffi.new("unsigned char[]", 1)
    box = ffi.from_buffer(data) + HEADER_BYTES
    if lib.crypto_secretbox_open_easy(target, box, len(data) - HEADER_BYTES, nonce, key.secret) != 0:
        raise SealedFileError(f"{where}: sealed file fails its MAC (tampered or truncated)")
    return out


class Sealer:
    """One node's sealing: its key (or none) and what it counted, for ``metrics.json``."""

    def __init__(self, key: StateKey | None = None) -> None:
        self.key = key
        self.counts: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Sealed bytes with a key; without one, the bytes unchanged (plaintext state, as before)."""
        if self.key is None:
            return plaintext
        self.counts["sealed"] += 1
        return seal_bytes(self.key, plaintext)

    def open(self, data: bytes | bytearray | memoryview, where: str,
             max_bytes: int = 1 << 40) -> bytes | bytearray | memoryview:
        """What :meth:`seal` wrote, checked: ``SealedFileError`` to skip (counted), ``StateKeyError`` to stop."""
        if self.key is None:
            if len(data) >= len(MAGIC) and looks_sealed(data):
                raise StateKeyError(f"{where} is sealed, but no state key is set: give it with {HOW_TO_GIVE}")
            return data
        try:
            plaintext = open_bytes(self.key, data, where, max_bytes)
        except SealedFileError:
            self.counts["mac_failures"] += 1
            raise
        self.counts["opened"] += 1
        return plaintext

    def check(self, data: bytes | bytearray | memoryview, where: str) -> None:
        """Raise ``StateKeyError`` if this file and this key do not go together (header only)."""
        if self.key is None:
            if len(data) >= len(MAGIC) and looks_sealed(data):
                raise StateKeyError(f"{where} is sealed, but no state key is set: give it with {HOW_TO_GIVE}")
            return
        if len(data) >= len(MAGIC) and not looks_sealed(data):
            raise _not_sealed(self.key, where)
        key_id = sealed_key_id(data)
        if key_id is not None and key_id != self.key.key_id:
            raise _other_key(self.key, where, key_id)

    def metrics(self) -> dict[str, object]:
        return {"sealed": self.enabled, "key_id": self.key.key_id.hex() if self.key else None,
                "files_sealed": self.counts["sealed"], "files_opened": self.counts["opened"],
                "mac_failures": self.counts["mac_failures"]}
