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
:data:`CHUNK_BYTES` segment at a time, each under the timeout. The client hashes and
writes each chunk on a worker thread while the loop receives the next (at most one
chunk in flight), and fsyncs off the loop.
"""

from __future__ import annotations

import asyncio
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
                count = min(CHUNK_BYTES, size - offset)
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
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=CHUNK_BYTES)
    except (OSError, TimeoutError) as exc:
        raise BlobError(f"cannot connect to blob provider {where}: {exc or 'timed out'}") from None
    try:
        await _receive(reader, writer, digest, store, where, max_bytes, timeout)
    except TimeoutError:
        raise BlobError(f"blob provider {where} stalled for more than {timeout}s on {digest}") from None
    except asyncio.IncompleteReadError as exc:
        raise BlobError(f"blob provider {where} closed the connection early ({exc})") from None
    except (ConnectionError, OSError) as exc:
        raise BlobError(f"blob transfer from {where} failed: {exc}") from None
    except DecodeError as exc:
        raise BlobError(f"blob provider {where} sent a malformed header: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return store.path(digest)


async def _receive(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    digest: str,
    store: BlobStore,
    where: str,
    max_bytes: int,
    timeout: float,
) -> None:
    writer.write(encode_request(digest))
    async with asyncio.timeout(timeout):
        await writer.drain()
    status, size = decode_response_header(await read_frame(reader, timeout))
    if status is not BlobStatus.OK:
        raise BlobError(f"blob provider {where} answered {status.value} for {digest}")
    if size > max_bytes:
        raise BlobError(f"blob {digest} at {where} is {size} bytes, over the {max_bytes}-byte limit; not fetched",
                        reason="oversize")
    with store.open_writer(expected_digest=digest, max_bytes=size) as blob:
        # Hash + write run on a worker thread, one batch behind the socket: the loop only receives.
        # Batches of >= WRITE_BATCH_BYTES keep thread hand-offs few (reads return what is buffered).
        writing: asyncio.Future[None] | None = None
        try:
            remaining = size
            batch: list[bytes] = []
            batched = 0
            while remaining > 0:
                async with asyncio.timeout(timeout):
                    chunk = await reader.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise BlobError(f"blob provider {where} closed after {size - remaining} of {size} bytes of {digest}")
                remaining -= len(chunk)
                batch.append(chunk)
                batched += len(chunk)
                if batched < WRITE_BATCH_BYTES and remaining > 0:
                    continue
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(_write_all, blob, batch))
                batch, batched = [], 0
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


def _write_all(blob: BlobWriter, chunks: list[bytes]) -> None:
    for chunk in chunks:
        blob.write(chunk)


async def _settle(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(Exception):
        await future


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
