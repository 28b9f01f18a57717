"""Embedded MQTT broker (amqtt) for a single machine with no broker configured.

amqtt's default config listens on 0.0.0.0 and loads $SYS, event and packet logger
plugins. We replace the whole config: one TCP listener bound to loopback, no
websocket listener, anonymous auth only. Binding anywhere else needs
``allow_remote=True``, because the embedded broker has no passwords, no TLS and no
message size cap: it is for one machine, production uses Mosquitto.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import BrokerError

from prime.core.errors import BusError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
_ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"


class _DropStartupTraceback(logging.Filter):
    """amqtt logs a traceback when it cannot bind; we re-raise it as a clear BusError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Broker startup failed"


def _quiet_logging() -> None:
    """Keep amqtt and transitions at ERROR unless the application configured them.

    amqtt warns about internal races (late PUBACKs at shutdown) that no user can act on.
    """
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
    broker_log = logging.getLogger("amqtt.broker")
    if not any(isinstance(f, _DropStartupTraceback) for f in broker_log.filters):
        broker_log.addFilter(_DropStartupTraceback())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def broker_config(host: str, port: int) -> dict[str, Any]:
    """The complete amqtt config: every field we rely on is explicit, none defaulted."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        # Replaces amqtt's default plugin set ($SYS topics, event/packet loggers).
        "plugins": {_ANONYMOUS: {"allow_anonymous": True}},
        "timeout_disconnect_delay": 0,
    }


class EmbeddedBroker:
    """An in-process amqtt broker on loopback; ``async with`` or ``start()``/``stop()``."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, allow_remote: bool = False) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        if not allow_remote and not _is_loopback(host):
            raise BusError(
                f"refusing to bind the embedded MQTT broker to {host}: it has no auth and no TLS. "
                "Bind 127.0.0.1, or pass allow_remote=True (and firewall the port) if you mean it"
            )
        if not 0 <= port < 65536:
            raise BusError(f"embedded broker port {port} is not in 0..65535")
        self.host = host
        self.port = port  # replaced by the real port once started on port 0
        self._broker: Broker | None = None

    @classmethod
    async def start(
        cls, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, allow_remote: bool = False
    ) -> "EmbeddedBroker":
        """Create and start a broker; raise ``BusError`` if it cannot listen."""
        broker = cls(host, port, allow_remote=allow_remote)
        await broker._start()
        return broker

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def _start(self) -> None:
        if self._broker is not None:
            return
        _quiet_logging()
        broker = Broker(broker_config(self.host, self.port))
        try:
            await broker.start()
        except BrokerError as exc:
            raise BusError(
                f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {exc.__cause__ or exc}. "
                "Is another broker already on that port? Point the bus URL at it or choose another port"
            ) from None
        self._broker = broker
        if self.port == 0:
            self.port = self._bound_port(broker)
        log.info("embedded MQTT broker listening on %s", self.url)

    @staticmethod
    def _bound_port(broker: Broker) -> int:
        # amqtt has no public accessor for the listening socket; only needed for port 0.
        server = broker._servers["default"].instance  # noqa: SLF001
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close every client session and the listener. Idempotent."""
        broker, self._broker = self._broker, None
        if broker is not None:
            # amqtt closes its listener only after dropping the sessions, so a client
            # that reconnects at once lands on a broker that no longer routes. Stop
            # accepting first. (No public hook: the servers dict is amqtt-internal.)
            for server in getattr(broker, "_servers", {}).values():
                if server.instance is not None:
                    server.instance.close()
            await broker.shutdown()
            log.info("embedded MQTT broker on %s stopped", self.url)

    async def __aenter__(self) -> "EmbeddedBroker":
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_until_signalled(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, allow_remote: bool = False) -> None:
    """Run a broker until SIGINT or SIGTERM arrives, then stop it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with EmbeddedBroker(host, port, allow_remote=allow_remote) as broker:
            print(f"prime broker: listening on {broker.url} (Ctrl-C to stop)", flush=True)
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_broker(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, allow_remote: bool = False) -> None:
    """Blocking entry for ``prime broker``: serve until SIGINT/SIGTERM. Raises ``BusError``."""
    asyncio.run(serve_until_signalled(host, port, allow_remote=allow_remote))
