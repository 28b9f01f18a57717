"""TCP blob service, server side: serve a blob store by digest (the client is :mod:`prime.blobs.fetch`).

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
import contextlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, BinaryIO

from prime.core.errors import BlobError, DecodeError
from prime.blobs.store import BlobStore, check_digest
from prime.blobs.wire import (
    DEFAULT_MAX_BLOB_BYTES,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_TIMEOUT_S,
    MAX_FRAME_BYTES,
    SEND_SEGMENT_BYTES,
    Address,
    BlobStatus,
    MalformedFrame,
    decode_request,
    encode_frame,
    read_frame,
)

log = logging.getLogger(__name__)

#: Test hook: ``PRIME_SIMULATED_UPLINK_MBIT=N`` caps all blob uploads of a process that makes its
#: peer with :class:`prime.dht.peer.Peer` at N Mbit/s (``benchmarks/overlap.py`` simulates links).
SIMULATED_UPLINK_ENV = "PRIME_SIMULATED_UPLINK_MBIT"


def simulated_uplink() -> float | None:
    """The upload cap in bytes per second that ``PRIME_SIMULATED_UPLINK_MBIT`` asks for (None: no cap)."""
    value = os.environ.get(SIMULATED_UPLINK_ENV, "").strip()
    if not value:
        return None
    try:
        mbit = float(value)
    except ValueError:
        raise BlobError(f"{SIMULATED_UPLINK_ENV}={value!r} is not a number of Mbit/s") from None
    return mbit * 1e6 / 8 if mbit > 0 else None


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
        self._digest_cap: tuple[str, int] | None = None  # (digest, max concurrent transfers of it)
        self._sending: Counter[str] = Counter()  # transfers in flight, by digest
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

    def limit_uploads(self, digest: str, max_clients: int) -> None:
        """Send ``digest`` to at most ``max_clients`` fetchers at a time; refuse the rest at once.

        For peer-assisted broadcast (:mod:`prime.dht.swarm`): a refused fetcher asks another
        provider, so the blob fans out instead of all copies leaving this node. Other blobs
        (updates, checkpoints) are unaffected; one digest at a time, a new call replaces it.
        """
        self._digest_cap = (check_digest(digest), max_clients)

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
        if self._at_cap(digest):
            self.metrics.aborted["busy"] += 1
            return
        self._sending[digest] += 1
        try:
            await self._send_blob(writer, digest)
        finally:
            self._sending[digest] -= 1
            if not self._sending[digest]:
                del self._sending[digest]

    def _at_cap(self, digest: str) -> bool:
        cap = self._digest_cap
        return cap is not None and cap[0] == digest and self._sending[digest] >= cap[1]

    async def _send_blob(self, writer: asyncio.StreamWriter, digest: str) -> None:
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
