"""Blob fetching, client side: stream a blob by digest, verify it while it arrives.

The client refuses a size over its cap before reading a byte, hashes while it writes
into a temp file, and only a blob whose SHA-256 matches is renamed into the store.
The kernel copies the body straight into a few reusable batch buffers; a worker thread
hashes and writes each full batch while the next fills, and the fsync runs off the
loop too. Reading pauses while every buffer waits for the worker. Wire format:
``prime.dht.blobwire``; server: ``prime.dht.blobservice``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from prime.core.errors import BlobError, DecodeError
from prime.dht.blobstore import BlobStore, BlobWriter, check_digest
from prime.dht.blobwire import (
    DEFAULT_MAX_BLOB_BYTES,
    DEFAULT_TIMEOUT_S,
    LEN_BYTES,
    WRITE_BATCH_BYTES,
    Address,
    BlobStatus,
    decode_response_header,
    encode_request,
    frame_length,
)

log = logging.getLogger(__name__)

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

    ``timeout`` bounds the connect and each read (a stall), not the whole transfer.
    """
    check_digest(digest)
    if store.has(digest):
        return store.path(digest)
    where = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    receiver = _Receiver(encode_request(digest))
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: receiver, host, port)
    except (OSError, TimeoutError) as exc:
        raise BlobError(f"cannot connect to blob provider {where}: {exc or 'timed out'}") from None
    try:
        await _receive(receiver, digest, store, where, max_bytes, timeout)
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
    return store.path(digest)


async def _receive(
    receiver: "_Receiver", digest: str, store: BlobStore, where: str, max_bytes: int, timeout: float
) -> None:
    async with asyncio.timeout(timeout):
        status, size = await receiver.header
    if status is not BlobStatus.OK:
        raise BlobError(f"blob provider {where} answered {status.value} for {digest}")
    if size > max_bytes:
        raise BlobError(f"blob {digest} at {where} is {size} bytes, over the {max_bytes}-byte limit; not fetched",
                        reason="oversize")
    with store.open_writer(expected_digest=digest, max_bytes=size) as blob:
        # The loop only receives (straight into batch buffers); a worker thread hashes and
        # writes each full batch while the next one fills.
        writing: asyncio.Future[None] | None = None
        try:
            receiver.accept_body(size)
            received = 0
            while received < size:
                batch = await receiver.next_batch(timeout)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(_write_batch, blob, batch, receiver))
                received += len(batch)
            if writing is not None:
                await writing
                writing = None
            try:
                await asyncio.to_thread(blob.commit)
            except BlobError as exc:
                raise BlobError(f"blob from {where} failed verification: {exc}", reason="tampered") from None
        finally:
            if writing is not None:  # never discard the temp file under a thread still writing to it
                await asyncio.shield(_settle(writing))


def _write_batch(blob: BlobWriter, batch: memoryview, receiver: "_Receiver") -> None:
    try:
        blob.write(batch)
    finally:
        receiver.release_threadsafe(batch)


async def _settle(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(Exception):
        await future


class _Receiver(asyncio.BufferedProtocol):
    """The client end of one fetch: sends the request, parses the header, then lets the
    kernel copy the body straight into a few reusable batch buffers (no per-chunk
    ``bytes`` objects). Reading pauses while every buffer waits to be hashed and written:
    that is the back-pressure on the provider.
    """

    _BUFFERS = 3

    def __init__(self, request: bytes) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._transport: asyncio.Transport | None = None
        self.header: asyncio.Future[tuple[BlobStatus, int]] = self._loop.create_future()
        self._prefix = bytearray(LEN_BYTES)
        self._frame: bytearray | None = None  # the header frame, once the prefix gave its length
        self._head_filled = 0  # bytes of the prefix, then of the frame
        self._body_left = -1  # bytes of body still to come; -1 until accept_body
        self._batch_size = 0
        self._buffers = 0
        self._free: list[bytearray] = []
        self._current: bytearray | None = None
        self._filled = 0
        self._ready: collections.deque[memoryview] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
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
        if self._body_left <= 0 or self._ended is not None:
            return memoryview(self._discard)
        if self._current is None:
            self._current = self._free.pop() if self._free else bytearray(self._batch_size)
            self._filled = 0
        end = min(len(self._current), self._filled + self._body_left)
        return memoryview(self._current)[self._filled:end]

    def buffer_updated(self, nbytes: int) -> None:
        self._progress = self._loop.time()
        if not self.header.done():
            self._head_filled += nbytes
            self._header_progress()
            return
        if self._body_left <= 0 or self._current is None:
            return  # past the body: ignored
        self._filled += nbytes
        self._body_left -= nbytes
        if self._filled == len(self._current) or self._body_left == 0:
            self._ready.append(memoryview(self._current)[: self._filled])
            self._current = None
            self._wake()
            if self._body_left > 0 and not self._free and self._buffers >= self._BUFFERS:
                self._pause()
            elif self._body_left > 0 and not self._free:
                self._buffers += 1  # get_buffer allocates it

    def eof_received(self) -> bool:
        self._end(asyncio.IncompleteReadError(b"", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc if exc is not None else asyncio.IncompleteReadError(b"", None))

    # -- the fetching task's side ---------------------------------------------------------

    def accept_body(self, size: int) -> None:
        """The header was acceptable: start taking ``size`` body bytes."""
        self._body_left = size
        self._batch_size = max(1, min(WRITE_BATCH_BYTES, size))
        self._buffers = 1
        self._resume()

    async def next_batch(self, timeout: float) -> memoryview:
        """The next filled batch; ``TimeoutError`` after ``timeout`` s without a byte arriving."""
        while not self._ready:
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
        return self._ready.popleft()

    def release_threadsafe(self, batch: memoryview) -> None:
        """A batch is hashed and written (called on the worker thread): reuse its buffer."""
        self._loop.call_soon_threadsafe(self._release, batch)

    async def close(self) -> None:
        if not self.header.done():
            self.header.cancel()
        elif not self.header.cancelled():
            self.header.exception()  # seen (the caller raised it or moved past it)
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

    def _release(self, batch: memoryview) -> None:
        buffer = batch.obj
        batch.release()
        if isinstance(buffer, bytearray) and len(buffer) == self._batch_size:
            self._free.append(buffer)
        if self._paused and self._body_left > 0 and self._ended is None:
            self._resume()

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
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
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
    failures: list[str] = []
    reasons: set[str] = set()
    for host, port in providers:
        try:
            return await fetch_blob(host, port, digest, store, max_bytes=max_bytes, timeout=timeout)
        except BlobError as exc:
            log.info("blob %s not fetched from %s:%s: %s", digest, host, port, exc)
            failures.append(f"{host}:{port}: {exc}")
            reasons.add(exc.reason)
    detail = "; ".join(failures) if failures else "no providers given"
    reason = reasons.pop() if len(reasons) == 1 else "unavailable"
    raise BlobError(f"could not fetch blob {digest} from any of {len(failures)} providers: {detail}", reason=reason)
