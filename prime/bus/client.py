"""BusClient: a small, reconnecting MQTT client over aiomqtt.

Why a wrapper: the rest of prime should see ``(topic, bytes)`` pairs, ``BusError``
and a payload cap, not paho reason codes. The client reconnects (with backoff, up
to ``max_retries``) when the connection drops, re-subscribes what it had, and
counts what it drops, so a broker restart or a flood of oversized junk never
stops a node. Payloads are opaque bytes here; verifying them is the reader's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import aiomqtt

from prime.core.errors import BusError, ConfigError
from prime.bus.topics import validate_topic

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
#: Largest payload the bus carries. Bus messages are small signed records; blobs
#: travel out of band. Matches the core record cap.
DEFAULT_MAX_PAYLOAD = 64 * 1024
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_MAX_QUEUED_INCOMING = 10_000  # back-pressure: beyond this aiomqtt discards (and logs)
_MAX_CONCURRENT_CALLS = 256  # back-pressure on publishers sharing one connection


@dataclass(frozen=True)
class BusURL:
    """A parsed ``mqtt://[user:pass@]host:port`` or ``mqtts://…`` URL."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def redacted(self) -> str:
        """The URL for messages and logs: never the password."""
        user = ""
        if self.username is not None:
            user = f"{self.username}:***@" if self.password is not None else f"{self.username}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"

    def __str__(self) -> str:
        return self.redacted()


def parse_bus_url(url: str) -> BusURL:
    """Parse a broker URL; raise ``ConfigError`` saying what is wrong and the expected form."""
    form = "expected mqtt://[user:pass@]host[:port] or mqtts://…"
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"bus URL is empty; {form}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bus URL {_safe(url)!r} is malformed ({exc}); {form}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        hint = " (use mqtt:// or mqtts://; websockets are not supported)" if scheme else ""
        raise ConfigError(f"bus URL {_safe(url)!r} has scheme {scheme!r}{hint}; {form}")
    if not parts.hostname:
        raise ConfigError(f"bus URL {_safe(url)!r} has no host; {form}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"bus URL {_safe(url)!r} has a path, query or fragment; {form}")
    if port == 0:
        raise ConfigError(f"bus URL {_safe(url)!r}: port must be in 1..65535")
    return BusURL(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        tls=scheme == "mqtts",
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _safe(url: str) -> str:
    """Best-effort password removal for error messages about a URL we could not parse."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.partition("://")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in userinfo else url


class LastWill(NamedTuple):
    """What the broker publishes for us if our connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class BusMetrics:
    """Counters for dashboards and tests; never reset by the client."""

    published: int = 0
    received: int = 0
    dropped_oversized: int = 0
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    bytes_published: int = 0
    bytes_received: int = 0


class BusClient:
    """One MQTT connection: ``async with BusClient(url, client_id) as bus: …``.

    ``publish`` may be called from many tasks at once. ``messages()`` should have a
    single reader (it drains one shared queue); dispatch on the topic there.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        will: LastWill | tuple[str, bytes, bool] | None = None,
        ca_file: str | Path | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_retries: int = 5,
        timeout: float = 10.0,
        keepalive: int = 30,
    ) -> None:
        self.url = parse_bus_url(url)
        if not client_id or not isinstance(client_id, str):
            raise ConfigError("bus client id must be a non-empty string (use the node's network id)")
        if will is not None:
            will = LastWill(*will)
            validate_topic(will.topic)
        if ca_file is not None and not self.url.tls:
            raise ConfigError(f"a CA file was given for {self.url}; TLS needs an mqtts:// URL")
        if max_retries < 0 or timeout <= 0 or max_payload <= 0:
            raise ConfigError("bus max_retries must be >= 0, timeout and max_payload > 0")
        self.client_id = client_id
        self.will = will
        self.max_payload = max_payload
        self.max_retries = max_retries
        self.timeout = timeout
        self.keepalive = keepalive
        self.metrics = BusMetrics()
        self._tls_context = self._make_tls_context(ca_file) if self.url.tls else None
        self._client: aiomqtt.Client | None = None
        self._generation = 0  # bumps on every (re)connect; tells callers whether someone reconnected
        self._reconnect_lock = asyncio.Lock()
        self._subscriptions: dict[str, int] = {}
        self._closed = False

    def _make_tls_context(self, ca_file: str | Path | None) -> ssl.SSLContext:
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError(f"CA file {ca_file} for {self.url} does not exist")
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load CA file {ca_file} for {self.url}: {exc}") from None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> "BusClient":
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, retrying with backoff; raise ``BusError`` after ``max_retries`` retries."""
        if self._closed:
            raise BusError(f"bus client for {self.url} is closed; make a new one")
        async with self._reconnect_lock:
            if self._client is None:
                await self._connect_with_retries()

    async def close(self) -> None:
        """Disconnect cleanly (the broker then discards our Last Will). Idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await _leave(client)

    def _new_client(self) -> aiomqtt.Client:
        will = None
        if self.will is not None:
            will = aiomqtt.Will(self.will.topic, self.will.payload, qos=1, retain=self.will.retain)
        client = aiomqtt.Client(
            self.url.host,
            self.url.port,
            username=self.url.username,
            password=self.url.password,
            identifier=self.client_id,
            will=will,
            clean_session=True,
            timeout=self.timeout,
            keepalive=self.keepalive,
            tls_context=self._tls_context,
            max_queued_incoming_messages=_MAX_QUEUED_INCOMING,
            max_concurrent_outgoing_calls=_MAX_CONCURRENT_CALLS,
            logger=log,
            # Small control messages must not wait for the broker's delayed ACK (Nagle: a PUBACK
            # then a PUBLISH in a row cost ~40 ms on Linux).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client.pending_calls_threshold = _MAX_CONCURRENT_CALLS + 1  # many in flight is normal here
        return client

    async def _connect_with_retries(self) -> None:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(_BACKOFF_FIRST_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
            client = self._new_client()
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                last = exc
                self.metrics.failed_attempts += 1
                log.debug("bus connect to %s failed (attempt %d): %s", self.url, attempt + 1, exc)
                if _auth_refused(exc):  # retrying the same credentials cannot help
                    who = f"user {self.url.username!r}" if self.url.username is not None else "no username"
                    raise BusError(
                        f"MQTT broker {self.url} refused {self.client_id!r} ({who}): {exc}. "
                        "Check the username and password in the bus URL and the broker's password file/ACL"
                    ) from None
                continue
            for topic, qos in self._subscriptions.items():
                try:
                    await client.subscribe(topic, qos=qos)
                except aiomqtt.MqttError as exc:
                    last = exc
                    await _leave(client)
                    break
            else:
                if self._closed:  # closed while we were connecting
                    await _leave(client)
                    raise BusError(f"bus client for {self.url} was closed while connecting")
                self._client = client
                self._generation += 1
                self.metrics.connects += 1
                return
        raise BusError(
            f"cannot connect to MQTT broker {self.url} as {self.client_id!r} after "
            f"{self.max_retries + 1} attempts: {last}. Check that a broker runs there "
            "(`prime broker` starts one on 127.0.0.1:1883), the bus URL, credentials and firewall"
        )

    async def _reconnect(self, failed_generation: int, cause: Exception) -> None:
        """Replace a dead connection once, however many tasks noticed it."""
        async with self._reconnect_lock:
            if self._closed:
                raise BusError(f"bus client for {self.url} is closed")
            if self._generation != failed_generation and self._client is not None:
                return  # another task already reconnected
            log.warning("bus connection to %s lost (%s); reconnecting", self.url, cause)
            old, self._client = self._client, None
            if old is not None:
                await _leave(old)
            await self._connect_with_retries()
            self.metrics.reconnects += 1

    async def _current(self) -> tuple[aiomqtt.Client, int]:
        if self._client is None and not self._closed and self._reconnect_lock.locked():
            async with self._reconnect_lock:  # a reconnect is under way: wait for its outcome
                pass
        if self._client is None:
            if self._closed:
                state = "closed"
            elif self._generation:
                state = "disconnected and could not reconnect (see the earlier error)"
            else:
                state = "not connected (use `async with BusClient(...)`)"
            raise BusError(f"bus client for {self.url} is {state}")
        return self._client, self._generation

    # -- operations ----------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        """Publish ``payload`` (QoS 1 by default: at least once); reconnect once if the link died."""
        validate_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"bus payloads are bytes, got {type(payload).__name__}")
        if len(payload) > self.max_payload:
            raise BusError(
                f"payload of {len(payload)} bytes for {topic} exceeds the {self.max_payload}-byte bus cap; "
                "send a small pointer record and move the data out of band"
            )
        for attempt in range(2):
            client, generation = await self._current()
            try:
                await client.publish(topic, bytes(payload), qos=qos, retain=retain)
            except aiomqtt.MqttError as exc:
                if attempt:
                    raise BusError(f"publish to {topic} on {self.url} failed: {exc}") from None
                await self._reconnect(generation, exc)
                continue
            self.metrics.published += 1
            self.metrics.bytes_published += len(payload)
            return

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe to a topic or wildcard; remembered and renewed after a reconnect."""
        validate_topic(topic, wildcard=True)
        self._subscriptions[topic] = qos
        client, generation = await self._current()
        try:
            granted = await client.subscribe(topic, qos=qos)
        except aiomqtt.MqttError as exc:
            await self._reconnect(generation, exc)  # re-subscribes everything, this one included
            return
        if any(_refused(code) for code in granted):
            self._subscriptions.pop(topic, None)
            raise BusError(f"broker {self.url} refused the subscription to {topic} (check its ACL)")

    async def messages(self) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(topic, payload)`` forever; oversized payloads are dropped and counted.

        Reconnects when the connection drops; raises ``BusError`` when it cannot.
        Ends when the client is closed.
        """
        while not self._closed:
            client, generation = await self._current()
            try:
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, (bytes, bytearray)):
                        payload = b"" if payload is None else str(payload).encode()
                    if len(payload) > self.max_payload:
                        self.metrics.dropped_oversized += 1
                        log.debug(
                            "dropped %d-byte message on %s: over the %d-byte cap",
                            len(payload), message.topic.value, self.max_payload,
                        )
                        continue
                    self.metrics.received += 1
                    self.metrics.bytes_received += len(payload)
                    yield message.topic.value, bytes(payload)
            except aiomqtt.MqttError as exc:
                if self._closed:
                    return
                await self._reconnect(generation, exc)


#: CONNACK codes meaning "these credentials are not accepted": MQTT 3.1.1 (4, 5) and
#: the MQTT 5 codes paho maps them to (134 bad user name or password, 135 not authorized).
_AUTH_REFUSED = frozenset({4, 5, 134, 135})


def _auth_refused(exc: Exception) -> bool:
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    value = getattr(exc.rc, "value", exc.rc)
    return isinstance(value, int) and value in _AUTH_REFUSED


def _refused(code: object) -> bool:
    """SUBACK failure: 0x80 in MQTT 3.1.1 (an int or a paho ReasonCode)."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


async def _leave(client: aiomqtt.Client) -> None:
    """Disconnect an aiomqtt client, ignoring a connection that is already gone."""
    with contextlib.suppress(aiomqtt.MqttError, OSError):
        await client.__aexit__(None, None, None)
