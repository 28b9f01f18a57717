"""BusClient against the real embedded broker on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from prime.bus.broker import EmbeddedBroker
from prime.bus.client import BusClient
from prime.bus.topics import Topics
from prime.core.errors import BusError

TOPICS = Topics("job-it")


@pytest.fixture
async def broker(port_factory) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(port=port_factory()) as b:
        yield b


async def take(bus: BusClient, n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """The next ``n`` messages, or fail after ``timeout`` seconds."""
    got: list[tuple[str, bytes]] = []

    async def collect() -> None:
        async for item in bus.messages():
            got.append(item)
            if len(got) == n:
                return

    await asyncio.wait_for(collect(), timeout)
    return got


async def test_publish_subscribe_roundtrip(broker: EmbeddedBroker) -> None:
    async with BusClient(broker.url, "sub") as sub, BusClient(broker.url, "pub") as pub:
        await sub.subscribe(TOPICS.updates)
        await pub.publish(TOPICS.updates, b"\x00notice\xff")
        assert await take(sub, 1) == [(TOPICS.updates, b"\x00notice\xff")]
        assert pub.metrics.published == 1 and sub.metrics.received == 1


async def test_retained_announce_reaches_a_late_subscriber(broker: EmbeddedBroker) -> None:
    async with BusClient(broker.url, "coord") as coord:
        await coord.publish(TOPICS.announce, b"round-1", retain=True)
        await coord.publish(TOPICS.announce, b"round-2", retain=True)
    async with BusClient(broker.url, "late") as late:
        await late.subscribe(TOPICS.announce)
        assert await take(late, 1) == [(TOPICS.announce, b"round-2")]


async def test_oversized_payload_is_dropped_and_counted(broker: EmbeddedBroker) -> None:
    async with BusClient(broker.url, "small", max_payload=1024) as small, BusClient(
        broker.url, "big", max_payload=1 << 20
    ) as big:
        await small.subscribe(TOPICS.updates)
        await big.publish(TOPICS.updates, b"x" * 5000)
        await big.publish(TOPICS.updates, b"ok")
        assert await take(small, 1) == [(TOPICS.updates, b"ok")]
        assert small.metrics.dropped_oversized == 1 and small.metrics.received == 1
        with pytest.raises(BusError, match="exceeds the 1024-byte bus cap"):
            await small.publish(TOPICS.updates, b"y" * 1025)


async def test_publish_is_safe_from_many_tasks(broker: EmbeddedBroker) -> None:
    async with BusClient(broker.url, "sub") as sub, BusClient(broker.url, "pub") as pub:
        await sub.subscribe(f"{TOPICS.prefix}/#")

        async def worker(w: int) -> None:
            for i in range(40):
                await pub.publish(TOPICS.updates, f"{w}:{i}".encode())

        await asyncio.gather(*(worker(w) for w in range(10)))
        got = await take(sub, 400)
        assert sorted(p for _, p in got) == sorted(f"{w}:{i}".encode() for w in range(10) for i in range(40))
        assert pub.metrics.published == 400


async def test_bad_topics_are_refused_before_the_wire(broker: EmbeddedBroker) -> None:
    async with BusClient(broker.url, "c") as bus:
        with pytest.raises(ValueError, match="wildcard"):
            await bus.publish(TOPICS.liveness_all, b"x")
        with pytest.raises(TypeError):
            await bus.publish(TOPICS.updates, "text")  # type: ignore[arg-type]


async def test_unreachable_broker_raises_bus_error_without_password(port_factory) -> None:
    url = f"mqtt://alice:hunter2@127.0.0.1:{port_factory()}"
    bus = BusClient(url, "c", max_retries=2, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(BusError) as info:
        async with bus:
            pass
    msg = str(info.value)
    assert "hunter2" not in msg and "mqtt://alice:***@127.0.0.1" in msg
    assert "3 attempts" in msg and "prime broker" in msg
    assert bus.metrics.failed_attempts == 3
    assert time.monotonic() - start < 3.0  # backoff 0.1 + 0.2 s


async def test_not_connected_use_is_a_bus_error() -> None:
    bus = BusClient("mqtt://127.0.0.1:1", "c")
    with pytest.raises(BusError, match="not connected"):
        await bus.publish(TOPICS.updates, b"x")


async def test_reconnects_and_resubscribes_after_broker_restart(port_factory) -> None:
    port = port_factory()
    broker = await EmbeddedBroker.start(port=port)
    try:
        async with BusClient(broker.url, "sub", max_retries=20) as sub, BusClient(
            broker.url, "pub", max_retries=20
        ) as pub:
            await sub.subscribe(TOPICS.updates)
            reader = asyncio.create_task(take(sub, 1, timeout=10))
            await asyncio.sleep(0.1)
            await broker.stop()
            broker = await EmbeddedBroker.start(port=port)
            # the publisher notices on its next publish, the reader on its own
            deadline = time.monotonic() + 8
            while not reader.done() and time.monotonic() < deadline:
                await pub.publish(TOPICS.updates, b"after-restart")
                await asyncio.sleep(0.2)
            assert (await reader) == [(TOPICS.updates, b"after-restart")]
            assert sub.metrics.reconnects == 1 and pub.metrics.reconnects == 1
    finally:
        await broker.stop()



async def test_connection_sends_small_messages_at_once(broker: EmbeddedBroker) -> None:
    """TCP_NODELAY: a PUBLISH right after a PUBACK must not wait ~40 ms for the broker's delayed ACK."""
    async with BusClient(broker.url, "fast") as bus:
        client, _ = await bus._current()
        sock = client._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
