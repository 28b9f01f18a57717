"""Blob fetching, client side: stream a blob by digest, verify it while it arrives.

The client refuses a size over its cap before reading a byte; then the kernel copies
the body straight into memory, a worker thread hashes each complete segment while the
next arrives, and only bytes whose SHA-256 matches are handed on: to the caller
(:func:`fetch_verified`, writable, so tensors decode from them without a copy) or into
the store (:func:`fetch_blob`). Wire format: ``prime.blobs.wire``; server:
``prime.blobs.service``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from prime.core.errors import BlobError, DecodeError
from prime.core.offload import run_sized
from prime.blobs.store import BlobStore, check_digest
from prime.blobs.wire import (
    DEFAULT_MAX_BLOB_BYTES,
    DEFAULT_TIMEOUT_S,
    HASH_SEGMENT_BYTES,
    LEN_BYTES,
    Address,
    BlobStatus,
    decode_response_header,
    encode_request,
    frame_length,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class ReceivedBytes:
    """Blob body bytes this process has received (verified or not): ``/metrics`` bytes in, and
    what a long model fetch's progress reads while it runs."""

    total: int = 0


received = ReceivedBytes()

async def fetch_blob(
    host: str,
    port: int,
    digest: str,
    store: BlobStore,
    *,
    max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Fetch ``digest`` from one provider into ``store``; raise ``BlobError`` on any failure.

    ``timeout`` bounds the connect and each read (a stall), not the whole transfer. The blob
    is received and verified in memory (at most ``max_bytes``), then written.
    """
    check_digest(digest)
    if store.has(digest):
        return store.path(digest)
    data = await fetch_bytes(host, port, digest, max_bytes=max_bytes, timeout=timeout)
    return await asyncio.to_thread(store.put_verified, digest, data)


async def fetch_bytes(
    host: str, port: int, digest: str, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES, timeout: float = DEFAULT_TIMEOUT_S,
) -> memoryview:
    """Fetch ``digest`` from one provider into memory: its verified bytes, writable (tensors
    decode from them as views); ``BlobError`` on any failure. Nothing is written to disk."""
    check_digest(digest)
    where = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    receiver = _Receiver(encode_request(digest))
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: receiver, host, port)
    except (OSError, TimeoutError) as exc:
        raise BlobError(f"cannot connect to blob provider {where}: {exc or 'timed out'}") from None
    try:
        return await _receive(receiver, digest, where, max_bytes, timeout)
    except TimeoutError:
        raise BlobError(f"blob provider {where} stalled for more than {timeout}s on {digest}") from None
    except asyncio.IncompleteReadError as exc:
        raise BlobError(f"blob provider {where} closed the connection early ({exc})") from None
    except (ConnectionError, OSError) as exc:
        raise BlobError(f"blob transfer from {where} failed: {exc}") from None
    except DecodeError as exc:
        raise BlobError(f"blob provider {where} sent a malformed header: {exc}") from None
    finally:
        await receiver.close()


async def _receive(receiver: "_Receiver", digest: str, where: str, max_bytes: int, timeout: float) -> memoryview:
    async with asyncio.timeout(timeout):
        status, size = await receiver.header
    if status is not BlobStatus.OK:
        raise BlobError(f"blob provider {where} answered {status.value} for {digest}")
    if size > max_bytes:
        raise BlobError(f"blob {digest} at {where} is {size} bytes, over the {max_bytes}-byte limit; not fetched",
                        reason="oversize")
    # The kernel copies the body straight into anonymous memory (a file mapping would make
    # every page a dirty page-cache page, throttled to the disk's pace); a worker thread
    # hashes each complete segment while the next ones arrive.
    body = memoryview(mmap.mmap(-1, size) if size else bytearray())
    receiver.accept_body(body)
    hasher = hashlib.sha256()
    hashed = 0
    while hashed < size:
        filled = await receiver.filled_past(min(size, hashed + HASH_SEGMENT_BYTES), timeout)
        await run_sized(filled - hashed, hasher.update, body[hashed:filled])
        received.total += filled - hashed
        hashed = filled
    if (actual := hasher.hexdigest()) != digest:
        raise BlobError(f"blob from {where} failed verification: digest mismatch: expected {digest}, "
                        f"received bytes hash to {actual}", reason="tampered")
    return body


class _Receiver(asyncio.BufferedProtocol):
    """The client end of one fetch: sends the request, parses the header, then lets the
    kernel copy the body straight into its destination: no per-chunk ``bytes`` objects,
    no copies, and no pausing, since every byte has its place.
    """

    def __init__(self, request: bytes) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._transport: asyncio.Transport | None = None
        self.header: asyncio.Future[tuple[BlobStatus, int]] = self._loop.create_future()
        self._prefix = bytearray(LEN_BYTES)
        self._frame: bytearray | None = None  # the header frame, once the prefix gave its length
        self._head_filled = 0  # bytes of the prefix, then of the frame
        self._target: memoryview | None = None  # where the body goes, once accepted
        self.filled = 0  # body bytes received
        self._wanted = 0  # wake the fetching task once this many have arrived
        self._waiter: asyncio.Future[None] | None = None
        self._ended: BaseException | None = None  # why no more bytes will come
        self._progress = self._loop.time()
        self._discard = bytearray(64 * 1024)  # anything a provider sends past the body

    # -- protocol callbacks (event loop) ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(self._request)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self.header.done():
            return memoryview(self._prefix if self._frame is None else self._frame)[self._head_filled:]
        if self._target is None or self.filled >= len(self._target) or self._ended is not None:
            return memoryview(self._discard)
        return self._target[self.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._progress = self._loop.time()
        if not self.header.done():
            self._head_filled += nbytes
            self._header_progress()
            return
        if self._target is None or self.filled >= len(self._target):
            return  # past the body: ignored
        self.filled += nbytes
        if self.filled >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._end(asyncio.IncompleteReadError(b"", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc if exc is not None else asyncio.IncompleteReadError(b"", None))

    # -- the fetching task's side ---------------------------------------------------------

    def accept_body(self, target: memoryview) -> None:
        """The header was acceptable: receive the body into ``target`` (its exact size)."""
        self._target = target
        self._resume()

    async def filled_past(self, wanted: int, timeout: float) -> int:
        """Body bytes received, once at least ``wanted``; ``TimeoutError`` after ``timeout`` s
        without a byte arriving."""
        self._wanted = wanted
        while self.filled < wanted:
            if self._ended is not None:
                raise self._ended
            self._waiter = self._loop.create_future()
            wait = self._progress + timeout - self._loop.time()
            if wait <= 0:
                raise TimeoutError
            try:
                async with asyncio.timeout(wait):
                    await self._waiter
            except TimeoutError:
                if self._loop.time() - self._progress >= timeout:
                    raise
            finally:
                self._waiter = None
        return self.filled

    async def close(self) -> None:
        if not self.header.done():
            self.header.cancel()
        elif not self.header.cancelled():
            self.header.exception()  # seen (the caller raised it or moved past it)
        self._target = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- internals ----------------------------------------------------------------------

    def _header_progress(self) -> None:
        try:
            if self._frame is None:
                if self._head_filled == LEN_BYTES:
                    self._frame = bytearray(frame_length(bytes(self._prefix)))
                    self._head_filled = 0
            elif self._head_filled == len(self._frame):
                status, size = decode_response_header(bytes(self._frame))
                self._pause()  # hold the body until the caller checked status and size
                self.header.set_result((status, size))
        except DecodeError as exc:
            self.header.set_exception(exc)
            if self._transport is not None:
                self._transport.close()

    def _end(self, exc: BaseException) -> None:
        if self._ended is None:
            self._ended = exc
        if not self.header.done():
            self.header.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._transport is not None:
            self._progress = self._loop.time()  # time spent paused was ours, not a stalled provider's
            self._transport.resume_reading()


async def fetch_from_any(
    providers: Iterable[Address],
    digest: str,
    store: BlobStore,
    *,
    max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Try ``providers`` in turn; return on the first verified copy, else say why each failed."""
    check_digest(digest)
    if store.has(digest):
        return store.path(digest)
    return await _from_any(providers, digest, lambda host, port: fetch_blob(
        host, port, digest, store, max_bytes=max_bytes, timeout=timeout))


async def _from_any(providers: Iterable[Address], digest: str,
                    fetch: Callable[[str, int], Awaitable[T]]) -> T:
    """``fetch`` from each provider in turn until one delivers; else say why each failed."""
    failures: list[str] = []
    reasons: set[str] = set()
    for host, port in providers:
        try:
            return await fetch(host, port)
        except BlobError as exc:
            log.info("blob %s not fetched from %s:%s: %s", digest, host, port, exc)
            failures.append(f"{host}:{port}: {exc}")
            reasons.add(exc.reason)
    detail = "; ".join(failures) if failures else "no providers given"
    reason = reasons.pop() if len(reasons) == 1 else "unavailable"
    raise BlobError(f"could not fetch blob {digest} from any of {len(failures)} providers: {detail}", reason=reason)


async def fetch_verified(
    providers: Iterable[Address],
    digest: str,
    store: BlobStore,
    *,
    max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> memoryview:
    """The blob's verified, writable bytes (tensors decode from them as views): the copy in
    ``store`` (re-verified; a corrupt one is discarded), else fetched from the first of
    ``providers`` that delivers it (verified as it arrives). A fetched blob is not stored:
    ``store.put_verified`` it, off the critical path, if it must be kept."""
    check_digest(digest)
    if store.has(digest):
        try:
            return await asyncio.to_thread(store.map_private, digest)
        except BlobError as exc:
            log.warning("%s; fetching it again", exc)
            store.discard(digest)
    return await _from_any(providers, digest, lambda host, port: fetch_bytes(
        host, port, digest, max_bytes=max_bytes, timeout=timeout))
