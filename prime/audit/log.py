"""Writing a node's audit log: one signed JSON line per security-relevant event.

A line is ``{seq, at, event, fields, prev, hash, sig}`` in canonical JSON (sorted keys, no
spaces). ``hash`` is the SHA-256 of the canonical line without ``hash`` and ``sig``, and
that line carries the previous line's hash as ``prev``, so editing, dropping or reordering
any line breaks the chain; ``sig`` is the node key's Ed25519 signature of ``hash`` (domain
``audit``), so a chain cannot be recomputed without the key. After every line a signed
head (``audit.head.json``: last seq and hash) is replaced atomically, so cutting lines off
the end is detected too.

The file is only ever appended to (``O_APPEND``, fsync per line). Appends are serialised
within a process (a lock) and across processes (``flock``): the coordinator daemon and an
operator's ``prime registry promote`` append to the same log. A crash can leave a torn last
line (never acknowledged, never in the head): the next writer cuts it off and logs an
``audit_repaired`` line saying how many bytes it dropped, with their SHA-256.
"""

from __future__ import annotations

import enum
import fcntl
import getpass
import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from prime.atomic import write_atomic
from prime.core.envelope import signing_digest
from prime.core.errors import AuditError
from prime.core.identity import Identity

AUDIT_FILE = "audit.jsonl"
HEAD_FILE = "audit.head.json"
#: ``prev`` of the first line.
GENESIS = "0" * 64
#: Longest line written or read (a bound for the verifier; field strings are cut well below it).
MAX_LINE_BYTES = 64 * 1024
#: Longest string kept in a field (refusal details and reasons are short; this bounds the rest).
MAX_FIELD_CHARS = 2000
#: The event that hands signing over to another key (``AuditLog.rotate``).
KEY_ROTATED = "key_rotated"

_DEPTH = 8


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def line_hash(seq: int, at: float, event: str, fields: dict[str, Any], prev: str) -> str:
    return hashlib.sha256(canonical({"seq": seq, "at": at, "event": event, "fields": fields, "prev": prev})).hexdigest()


def line_signed_bytes(hash_hex: str) -> bytes:
    return signing_digest("audit", bytes.fromhex(hash_hex))


def head_signed_bytes(seq: int, hash_hex: str) -> bytes:
    return signing_digest("audit-head", canonical({"seq": seq, "hash": hash_hex}))


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data: bytes as hex, enums as their value, paths and non-finite floats as text."""
    if depth > _DEPTH:
        raise AuditError(f"audit field nested deeper than {_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value, depth + 1)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value[:MAX_FIELD_CHARS]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(v, depth + 1) for v in value)
    raise AuditError(f"audit field of type {type(value).__name__} is not JSON data")


class AuditLog:
    """A node's audit log in ``data_dir``, signed with ``identity``. Open with ``AuditLog.open``."""

    def __init__(self, data_dir: Path, identity: Identity) -> None:
        self.path = data_dir / AUDIT_FILE
        self.head_path = data_dir / HEAD_FILE
        self.identity = identity
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._end = -1  # file size after our last write; another size means someone else appended
        self._seq, self._prev = 0, GENESIS

    @classmethod
    def open(cls, data_dir: str | os.PathLike, identity: Identity) -> "AuditLog":
        """Open (creating) ``data_dir/audit.jsonl``; repair a torn last line and a lagging head."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        log = cls(data_dir, identity)
        with log._lock, log._exclusive():
            log._sync_tail()
        return log

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one signed line for ``event`` with ``fields`` (JSON data; bytes become hex); return it."""
        if not event or len(event) > 64 or not all(c.islower() or c.isdigit() or c in "_." for c in event):
            raise AuditError(f"audit event name {event!r}: use 1-64 of a-z, 0-9, '_' and '.'")
        data = plain(fields)
        with self._lock, self._exclusive():
            self._sync_tail()
            return self._write(event, data)

    def rotate(self, new_identity: Identity) -> dict[str, Any]:
        """Hand signing to ``new_identity``: a ``key_rotated`` line naming the new key, signed by the old."""
        with self._lock, self._exclusive():
            self._sync_tail()
            line = self._write(KEY_ROTATED, {"new_key": new_identity.public_key_hex,
                                             "old_key": self.identity.public_key_hex})
            self.identity = new_identity
            self._write_head()
            return line

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------
    def _exclusive(self):
        fd = self._fd

        class _Flock:
            def __enter__(self_inner):
                fcntl.flock(fd, fcntl.LOCK_EX)

            def __exit__(self_inner, *exc):
                fcntl.flock(fd, fcntl.LOCK_UN)

        return _Flock()

    def _write(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        seq, at = self._seq + 1, time.time()
        digest = line_hash(seq, at, event, fields, self._prev)
        line = {"seq": seq, "at": at, "event": event, "fields": fields, "prev": self._prev, "hash": digest,
                "sig": self.identity.sign(line_signed_bytes(digest)).hex()}
        data = canonical(line) + b"\n"
        if len(data) > MAX_LINE_BYTES:
            raise AuditError(f"audit line for {event!r} is {len(data)} bytes, over {MAX_LINE_BYTES}: "
                             "log less in its fields")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self._seq, self._prev = seq, digest
        self._end = os.fstat(self._fd).st_size
        self._write_head()
        return line

    def _write_head(self) -> None:
        sig = self.identity.sign(head_signed_bytes(self._seq, self._prev)).hex()
        write_atomic(self.head_path, canonical({"seq": self._seq, "hash": self._prev, "sig": sig}) + b"\n")

    def _sync_tail(self) -> None:
        """Learn the last line's seq and hash if the file changed since our last write (another
        process appended, or we just opened it); cut off a torn last line and log that."""
        size = os.fstat(self._fd).st_size
        if size == self._end:
            return
        torn = b""
        with open(self.path, "rb") as fh:
            tail, start = b"", size
            while start > 0:
                step = min(start, 1 << 16)
                start -= step
                fh.seek(start)
                tail = fh.read(step) + tail
                if tail.rstrip(b"\n").count(b"\n") >= 1 or start == 0:
                    break
                if len(tail) > 2 * MAX_LINE_BYTES + 2:  # no line is that long: this is not an audit log
                    raise AuditError(f"{self.path}: no line break in its last {len(tail)} bytes; not an audit "
                                     f"log (run prime audit verify --data-dir {self.path.parent})")
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            torn = tail[cut:]
            tail = tail[:cut]
            os.ftruncate(self._fd, size - len(torn))
            os.fsync(self._fd)
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1] if tail.strip() else b""
        if last:
            try:
                parsed = json.loads(last)
                self._seq, self._prev = int(parsed["seq"]), str(parsed["hash"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(f"{self.path}: the last line is not an audit line ({exc}); "
                                 f"run prime audit verify --data-dir {self.path.parent}") from None
        else:
            self._seq, self._prev = 0, GENESIS
        self._end = os.fstat(self._fd).st_size
        head = self._head()
        if head != (self._seq, self._prev) and not (self._seq == 0 and head is None):
            lagging = (head is None and self._seq == 1) or (head is not None and head[0] == self._seq - 1)
            if not lagging:  # lines were cut off or replaced: never paper over it with a new head
                raise AuditError(
                    f"{self.path} ends at line {self._seq} but its signed head {self.head_path.name} says "
                    f"{'nothing' if head is None else f'line {head[0]}'}: lines were removed or replaced. Run "
                    f"prime audit verify --data-dir {self.path.parent}; move both files aside to start a new log")
            self._write_head()  # a crash between a line and its head
        if torn:
            self._write("audit_repaired", {"dropped_bytes": len(torn),
                                           "dropped_sha256": hashlib.sha256(torn).hexdigest()})

    def _head(self) -> tuple[int, str] | None:
        try:
            head = json.loads(self.head_path.read_bytes())
            return int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return (-1, "")  # unreadable: never a match


def operator_name() -> str:
    """Who runs an audited operator command (the OS user; ``unknown`` where there is none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
