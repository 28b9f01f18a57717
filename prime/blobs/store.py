"""Content-addressed blob store on local disk: a blob's name is its SHA-256.

Model and update tensors travel out of band as blobs; DHT records only point at
them by digest. Every write goes to a temp file that is hashed while written and
renamed into place only once its digest checks, so a reader never sees a partial or
unverified blob (DESIGN invariant 5), and a crash leaves at most a stray temp file.

Blobs this node creates (``put_bytes``/``put_parts``/``put_file``: its models, its
updates, checkpoints) are fsynced before the rename: a database may point at them.
Blobs received from elsewhere (``put_verified``) are not: the network is their backup,
every read re-verifies (:meth:`BlobStore.read_bytes`, :meth:`BlobStore.map_private`),
and a corrupt one is discarded and fetched again.

The API is synchronous disk I/O. From async code, large ``put_*``/``read_bytes``
calls belong in ``asyncio.to_thread``; the blob service streams per chunk instead.

Large blobs hash and move bytes on two threads at once (hashlib and file I/O both
release the GIL): ``put_parts`` hashes the pieces of a blob (a header and views of
tensors: never joined into one buffer) while a helper thread writes and fsyncs them,
and ``read_bytes`` re-hashes the file through a read-only mapping while it copies it
out, so each costs about one SHA-256 pass instead of a hash plus a copy plus an fsync.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from prime.core.errors import BlobError

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_COPY_CHUNK = 1024 * 1024
#: Below this, a second thread costs more than it saves.
_PARALLEL_MIN_BYTES = 4 * 1024 * 1024
_STALE_TEMP_S = 3600.0


def check_digest(digest: object) -> str:
    """Return ``digest`` if it is 64 lowercase hex chars, else raise ``BlobError``.

    Digests become file names, so this is also what stops path traversal.
    """
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise BlobError(f"invalid blob digest {str(digest)[:80]!r}: expected 64 lowercase hex chars (SHA-256)")
    return digest


def is_digest(digest: object) -> bool:
    return isinstance(digest, str) and _DIGEST_RE.fullmatch(digest) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alongside(side: Callable[[], object], main: Callable[[], str]) -> str:
    """Run ``side`` on a helper thread while ``main`` runs here; return ``main``'s result.

    Both must spend their time in GIL-releasing calls (hashlib, file I/O) to overlap.
    An error from either is raised here, after both have finished.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            side()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    helper = threading.Thread(target=run, name="blobstore-io", daemon=True)
    helper.start()
    try:
        result = main()
    finally:
        helper.join()
    if errors:
        raise errors[0]
    return result


class BlobWriter:
    """A blob being written: hashed as it is written, visible only after :meth:`commit`.

    Use as a context manager; leaving without ``commit`` (or on error) discards it.
    """

    def __init__(self, store: "BlobStore", expected: str | None, max_bytes: int | None) -> None:
        self._store = store
        self._expected = check_digest(expected) if expected is not None else None
        self._max_bytes = max_bytes
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-", suffix=".part")
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.bytes_written = 0
        self.digest: str | None = None

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise BlobError("blob writer is already closed")
        self.bytes_written += len(chunk)
        if self._max_bytes is not None and self.bytes_written > self._max_bytes:
            self.abort()
            raise BlobError(f"blob exceeds the {self._max_bytes}-byte limit")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> str:
        """fsync, check the digest (if one was expected), and rename into place."""
        if self._file is None:
            raise BlobError("blob writer is already closed")
        self._sync()
        return self._publish(self._hash.hexdigest())

    def _sync(self) -> None:
        if self._file is None:
            raise BlobError("blob writer is already closed")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _write_synced(self, parts: Sequence[memoryview]) -> None:
        """Write and fsync without hashing (the caller hashes the same bytes in parallel)."""
        if self._file is None:
            raise BlobError("blob writer is already closed")
        self.bytes_written += sum(len(p) for p in parts)
        if self._max_bytes is not None and self.bytes_written > self._max_bytes:
            raise BlobError(f"blob exceeds the {self._max_bytes}-byte limit")
        for part in parts:
            self._file.write(part)
        self._sync()

    def _publish(self, digest: str) -> str:
        """Close the synced temp file and rename it into place as ``digest`` (checked if expected)."""
        if self._file is None:
            raise BlobError("blob writer is already closed")
        self._file.close()
        self._file = None
        if self._expected is not None and digest != self._expected:
            self._tmp.unlink(missing_ok=True)
            raise BlobError(f"digest mismatch: expected {self._expected}, received bytes hash to {digest}")
        final = self._store._blob_path(digest)
        if final.exists():  # content-addressed: same name, same bytes
            self._tmp.unlink(missing_ok=True)
        else:
            final.parent.mkdir(exist_ok=True)
            os.chmod(self._tmp, 0o444)  # blobs are immutable; an in-place edit would be corruption
            os.replace(self._tmp, final)
            _fsync_dir(final.parent)
        self.digest = digest
        return digest

    def abort(self) -> None:
        """Discard the partial blob (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.digest is None:
            self.abort()


def _sha256(views: Sequence[memoryview]) -> str:
    hasher = hashlib.sha256()
    for view in views:
        hasher.update(view)
    return hasher.hexdigest()


class BlobStore:
    """Blobs under ``root/objects/<2 hex>/<digest>``; temp files under ``root/tmp``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """Drop temp files a crash left behind (old ones only: another writer may share root)."""
        cutoff = time.time() - _STALE_TEMP_S
        for tmp in self.tmp_dir.glob("blob-*.part"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                continue

    def _blob_path(self, digest: str) -> Path:
        check_digest(digest)
        return self.objects_dir / digest[:2] / digest

    def open_writer(self, expected_digest: str | None = None, max_bytes: int | None = None) -> BlobWriter:
        """Start a streamed write; ``commit()`` returns the digest (checked if expected)."""
        return BlobWriter(self, expected_digest, max_bytes)

    def put_bytes(self, data: bytes | bytearray | memoryview) -> str:
        return self.put_parts([data])

    def put_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> str:
        """Store the concatenation of ``parts`` (never joined in memory); return its digest."""
        views = [memoryview(p).cast("B") for p in parts]
        if sum(len(v) for v in views) < _PARALLEL_MIN_BYTES:
            digest = _sha256(views)
            if self.has(digest):
                return digest
            with self.open_writer(expected_digest=digest) as writer:
                for view in views:
                    writer.write(view)
                return writer.commit()
        # Large: hash here while the helper writes and fsyncs; a duplicate is dropped at publish.
        with self.open_writer() as writer:
            digest = _alongside(lambda: writer._write_synced(views), lambda: _sha256(views))
            return writer._publish(digest)

    def put_verified(self, digest: str, data: bytes | bytearray | memoryview) -> Path:
        """Keep a blob received from elsewhere whose bytes the caller checked against ``digest``:
        written and renamed into place without hashing again or fsyncing (module docstring)."""
        final = self._blob_path(digest)
        if final.exists():
            return final
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            final.parent.mkdir(exist_ok=True)
            os.chmod(name, 0o444)
            os.replace(name, final)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return final

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Copy a file in, streaming (never holds the whole file in memory)."""
        try:
            src = open(path, "rb")
        except OSError as exc:
            raise BlobError(f"cannot read {path} into the blob store: {exc}") from None
        with src, self.open_writer() as writer:
            while chunk := src.read(_COPY_CHUNK):
                writer.write(chunk)
            return writer.commit()

    def has(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def path(self, digest: str) -> Path:
        """Where the blob lives; raise ``BlobError`` if it is not here."""
        path = self._blob_path(digest)
        if not path.is_file():
            raise BlobError(f"blob {digest} is not in the store at {self.root}")
        return path

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def map_private(self, digest: str, *, verify: bool = True) -> memoryview:
        """The blob as a private, writable mapping of its file: no copy (pages are shared with
        the page cache until written), so tensors decoded from it are views. Re-verified unless
        ``verify`` is False (the caller verified it as it arrived)."""
        with open(self.path(digest), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                mapped: mmap.mmap | bytearray = bytearray()
            else:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        view = memoryview(mapped)
        if verify and (actual := _sha256([view])) != digest:
            raise BlobError(f"blob {digest} is corrupt on disk (its bytes hash to {actual}); delete and refetch it")
        return view

    def discard(self, digest: str) -> None:
        """Remove a blob (a corrupt copy, so it can be fetched again)."""
        self._blob_path(digest).unlink(missing_ok=True)

    def read_bytes(self, digest: str) -> bytes:
        """The blob's bytes, re-verified against its digest (disks rot; files get edited)."""
        with open(self.path(digest), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < _PARALLEL_MIN_BYTES:
                data = file.read()
                actual = hashlib.sha256(data).hexdigest()
            else:  # hash the page cache through a mapping while copying the same pages out
                with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    copied: list[bytes] = []
                    actual = _alongside(lambda: copied.append(file.read()),
                                        lambda: hashlib.sha256(mapped).hexdigest())
                data = copied[0]
        if actual != digest:
            raise BlobError(f"blob {digest} is corrupt on disk (its bytes hash to {actual}); delete and refetch it")
        return data
