"""TCP blob service: peers fetch blobs by digest, streamed and verified while received.

Wire protocol (one request per connection), frames are ``4-byte big-endian length |
canonical msgpack``, each at most :data:`MAX_FRAME_BYTES`:

    client -> server   {"digest": <64 hex>}
    server -> client   {"status": "ok"|"not_found"|"bad_request"|"too_large", "size": int}
                       then, if ok, exactly ``size`` raw bytes in chunks

The client refuses a size over its cap before reading a byte, hashes while it
writes into a temp file, and only a blob whose SHA-256 matches is renamed into the
store. Every read has a timeout, so a stalled peer costs at most ``timeout``
seconds; writes wait on ``drain()`` (back-pressure) under the same timeout.

Neither side touches the bytes on the event loop. The server hands the file to the
kernel (``loop.sendfile``: zero-copy ``os.sendfile`` on plain TCP), one
:data:`SEND_SEGMENT_BYTES` segment at a time, each under the timeout. The client's
protocol lets the kernel copy the body straight into a few reusable batch buffers; a
worker thread hashes and writes each full batch while the next fills, and the fsync
runs off the loop too. Reading pauses while every buffer waits for the worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from prime.core import encoding
from prime.core.errors import BlobError, DecodeError
from prime.dht.blobstore import BlobStore, BlobWriter, check_digest, is_digest

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
#: The client hands received bytes to its hashing/writing thread in batches of this much.
WRITE_BATCH_BYTES = 4 * 1024 * 1024
#: The server hands the kernel this much per ``sendfile``; a client must take each within ``timeout``.
SEND_SEGMENT_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 256
DEFAULT_MAX_BLOB_BYTES = 1024**3
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_CLIENTS = 64
_LEN_BYTES = 4

Address = tuple[str, int]


class BlobStatus(str, Enum):
    OK = "ok"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"


class MalformedFrame(DecodeError):
    """A request or header frame is not what the protocol allows; ``reason`` says how."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


# -- framing (pure; property-tested) ------------------------------------------------


def encode_frame(obj: Any) -> bytes:
    body = encoding.pack(obj)
    return len(body).to_bytes(_LEN_BYTES, "big") + body


def frame_length(prefix: bytes) -> int:
    """Body length from a 4-byte prefix; refuse empty or oversized frames before reading them."""
    if len(prefix) != _LEN_BYTES:
        raise MalformedFrame("truncated", "length prefix cut short")
    length = int.from_bytes(prefix, "big")
    if not 0 < length <= MAX_FRAME_BYTES:
        raise MalformedFrame("oversize", f"frame of {length} bytes; limit {MAX_FRAME_BYTES}")
    return length


def encode_request(digest: str) -> bytes:
    return encode_frame({"digest": check_digest(digest)})


def decode_request(body: bytes) -> str:
    """The digest a request body asks for; raise ``DecodeError`` if it is anything else."""
    obj = encoding.unpack(body, max_bytes=MAX_FRAME_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"digest"}:
        raise MalformedFrame("bad_shape", "request must be {digest}")
    if not is_digest(obj["digest"]):
        raise MalformedFrame("bad_digest", "digest must be 64 lowercase hex chars")
    return obj["digest"]


def decode_response_header(body: bytes) -> tuple[BlobStatus, int]:
    obj = encoding.unpack(body, max_bytes=MAX_FRAME_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"status", "size"}:
        raise MalformedFrame("bad_shape", "header must be {status, size}")
    status, size = obj["status"], obj["size"]
    if not isinstance(status, str) or status not in {s.value for s in BlobStatus}:
        raise MalformedFrame("bad_status", repr(status)[:40])
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedFrame("bad_size", repr(size)[:40])
    return BlobStatus(status), size


async def read_frame(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Read one frame body; raises ``MalformedFrame``, ``TimeoutError`` or ``IncompleteReadError``."""
    async with asyncio.timeout(timeout):
        length = frame_length(await reader.readexactly(_LEN_BYTES))
        return await reader.readexactly(length)


# -- server ----------------------------------------------------------------------------


@dataclass
class BlobServerMetrics:
    served: int = 0
    bytes_sent: int = 0
    not_found: int = 0
    too_large: int = 0
    #: malformed or timed-out requests, by reason
    bad_requests: Counter[str] = field(default_factory=Counter)
    #: transfers cut short (client gone, stalled, server busy), by reason
    aborted: Counter[str] = field(default_factory=Counter)


class BlobServer:
    """Serves a :class:`BlobStore` over TCP. Make with ``await BlobServer.start(...)``."""

    def __init__(self, store: BlobStore, max_blob_bytes: int, timeout: float, max_clients: int,
                 max_bytes_per_second: float | None = None) -> None:
        if max_bytes_per_second is not None and not max_bytes_per_second > 0:
            raise ValueError(f"max_bytes_per_second must be positive, got {max_bytes_per_second!r}")
        self.store = store
        self.metrics = BlobServerMetrics()
        self._max_blob_bytes = max_blob_bytes
        self._timeout = timeout
        self._max_clients = max_clients
        self._rate = max_bytes_per_second
        self._next_send = 0.0  # loop time before which the upload budget is spent
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._address: Address = ("", 0)

    @classmethod
    async def start(
        cls,
        store: BlobStore,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_bytes_per_second: float | None = None,
    ) -> "BlobServer":
        """Listen on ``host:port`` (loopback by default); ``timeout`` bounds every read and drain.

        ``max_clients`` caps concurrent transfers (more are refused at once, so a fetcher
        moves on to another provider); ``max_bytes_per_second`` caps the upload of all
        transfers together (a node's uplink share), None for no cap.
        """
        self = cls(store, max_blob_bytes, timeout, max_clients, max_bytes_per_second)
        try:
            self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_FRAME_BYTES * 4)
        except OSError as exc:
            raise BlobError(f"cannot listen for blob requests on {host}:{port}: {exc}") from None
        sockname = self._server.sockets[0].getsockname()
        self._address = (sockname[0], sockname[1])
        return self

    @property
    def address(self) -> Address:
        return self._address

    async def close(self) -> None:
        """Stop accepting, cut in-flight transfers, and wait until they are gone."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> "BlobServer":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()  # start_server runs each client in its own task
        try:
            if len(self._handlers) >= self._max_clients:
                self.metrics.aborted["busy"] += 1
                return
            if task is not None:
                self._handlers.add(task)
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # only close() cancels these tasks; ending quietly keeps asyncio's own
            # done-callback (which calls task.exception()) from logging an error
            self.metrics.aborted["server_closed"] += 1
        except TimeoutError:
            self.metrics.aborted["stalled"] += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.metrics.aborted["client_gone"] += 1
        except BlobError as exc:
            self.metrics.aborted["source_changed"] += 1
            log.warning("blob server: %s", exc)
        except Exception:  # a bug here must cost one connection, not the server
            self.metrics.aborted["internal_error"] += 1
            log.exception("blob server failed serving %s", writer.get_extra_info("peername"))
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            digest = decode_request(await read_frame(reader, self._timeout))
        except MalformedFrame as exc:
            return await self._refuse(writer, exc.reason)
        except DecodeError:
            return await self._refuse(writer, "bad_msgpack")
        except TimeoutError:
            self.metrics.bad_requests["timeout"] += 1
            return
        except asyncio.IncompleteReadError:
            self.metrics.bad_requests["truncated"] += 1
            return
        try:
            file: BinaryIO = open(self.store.path(digest), "rb")
        except (BlobError, OSError):
            self.metrics.not_found += 1
            return await self._send(writer, encode_frame({"status": BlobStatus.NOT_FOUND.value, "size": 0}))
        with file:
            size = os.fstat(file.fileno()).st_size
            if size > self._max_blob_bytes:
                self.metrics.too_large += 1
                return await self._send(writer, encode_frame({"status": BlobStatus.TOO_LARGE.value, "size": size}))
            await self._send(writer, encode_frame({"status": BlobStatus.OK.value, "size": size}))
            loop = asyncio.get_running_loop()
            offset = 0
            while offset < size:
                count = min(SEND_SEGMENT_BYTES, size - offset)
                await self._throttle(count)
                async with asyncio.timeout(self._timeout):  # a client that stops reading stalls here
                    sent = await loop.sendfile(writer.transport, file, offset, count)
                if sent < count:
                    raise BlobError(f"blob {digest} shrank while being served")
                offset += sent
                self.metrics.bytes_sent += sent
        self.metrics.served += 1

    async def _throttle(self, count: int) -> None:
        """Wait until the capped uplink would have carried ``count`` more bytes (transfers queue FIFO)."""
        if self._rate is None:
            return
        now = asyncio.get_running_loop().time()
        self._next_send = max(now, self._next_send) + count / self._rate
        await asyncio.sleep(self._next_send - now)

    async def _refuse(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self.metrics.bad_requests[reason] += 1
        log.debug("bad blob request from %s: %s", writer.get_extra_info("peername"), reason)
        await self._send(writer, encode_frame({"status": BlobStatus.BAD_REQUEST.value, "size": 0}))

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self._timeout):
            await writer.drain()


# -- client ------------------------------------------------------------------------------


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
        self._prefix = bytearray(_LEN_BYTES)
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
                if self._head_filled == _LEN_BYTES:
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
