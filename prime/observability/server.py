"""A tiny asyncio HTTP server answering ``GET /metrics`` from one node's own registry.

Served on the node's event loop, so collectors read the node's live state on the thread that
owns it (no locks, no half-updated counters). Bound to 127.0.0.1 unless told otherwise; a
port that is taken fails at start, naming the port. Requests are bounded: one request line
and headers of at most ``MAX_REQUEST_BYTES``, read within ``REQUEST_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from prime.core.errors import ConfigError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0


def route(request: bytes) -> str:
    """What a request head (any bytes from the network) asks for: ``metrics``, ``bad_method`` or ``not_found``."""
    method, path = (request.split(b" ", 2) + [b"", b""])[:2]
    if method != b"GET":
        return "bad_method"
    return "metrics" if path.split(b"?", 1)[0] in (b"/metrics", b"/") else "not_found"


class MetricsServer:
    """``server = await MetricsServer.start(registry, host, port)``; ``await server.close()``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.scrapes = 0
        self._server: asyncio.Server | None = None

    @classmethod
    async def start(cls, registry: CollectorRegistry, host: str, port: int) -> "MetricsServer":
        self = cls(registry)
        try:
            self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--metrics-port {port}: port {port} on {host} is already in use; "
                                  f"choose a free port (or stop what holds it)") from None
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror}") from None
        log.info("serving Prometheus metrics at http://%s/metrics", self.address)
        return self

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readuntil(b"\r\n\r\n")
            asked = route(request)
            if asked == "metrics":
                body, status, kind = generate_latest(self.registry), "200 OK", CONTENT_TYPE_LATEST
                self.scrapes += 1
            elif asked == "bad_method":
                status, body, kind = "405 Method Not Allowed", b"GET /metrics only\n", "text/plain"
            else:
                status, body, kind = "404 Not Found", b"try /metrics\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, truncated or oversized request: dropped, nothing else waits on it
        except Exception:  # a collector bug must not kill the node; the scrape fails, the log says why
            log.exception("metrics scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
