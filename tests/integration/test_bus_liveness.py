"""Heartbeats, the signed Last Will and the tracker over the real embedded broker."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from prime.bus.broker import EmbeddedBroker
from prime.bus.client import BusClient
from prime.bus.liveness import Heartbeat, LivenessTracker
from prime.bus.topics import Topics
from prime.core.envelope import Domain, seal
from prime.core.identity import Identity
from tests.integration.netutil import watch_until, went_offline

TOPICS = Topics("job-live")

# A node in another process: connects with its signed Will, beats, then idles until killed.
NODE = """
import asyncio, sys
from prime.bus import BusClient, Heartbeat, Topics
from prime.core.identity import Identity

async def main(url):
    ident = Identity.generate("victim")
    hb = Heartbeat(ident, Topics("job-live"), interval=0.2)
    async with BusClient(url, ident.network_id, will=hb.will) as bus:
        hb.start(bus)
        print(ident.public_key_hex, flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture
async def broker(port_factory) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(port=port_factory()) as b:
        yield b


async def test_will_marks_a_killed_node_offline(broker: EmbeddedBroker) -> None:
    tracker = LivenessTracker(timeout_s=30)
    async with BusClient(broker.url, "watcher") as watcher:
        await watcher.subscribe(TOPICS.liveness_all)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", NODE, broker.url, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            key = bytes.fromhex(line.decode().strip())
            await watch_until(watcher, tracker, lambda: tracker.is_alive(key))
            os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker must publish the Will
            await proc.wait()

            await watch_until(watcher, tracker, lambda: went_offline(tracker, key))
            assert not tracker.is_alive(key) and key not in tracker.alive()
            assert tracker.dropped_total == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_graceful_stop_says_offline_itself(broker: EmbeddedBroker) -> None:
    tracker = LivenessTracker()
    ident = Identity.generate("polite")
    hb = Heartbeat(ident, TOPICS, interval=0.05, info={"gpus": 0})
    async with BusClient(broker.url, "watcher") as watcher:
        await watcher.subscribe(TOPICS.liveness_all)
        async with BusClient(broker.url, ident.network_id, will=hb.will) as bus:
            hb.start(bus)

            def three_beats() -> bool:
                last = tracker.last(ident.public_key)
                return last is not None and last.seq >= 3

            await watch_until(watcher, tracker, three_beats)
            assert tracker.is_alive(ident.public_key)
            assert tracker.alive()[ident.public_key].info == {"gpus": 0}
            await hb.stop()
        await watch_until(watcher, tracker, lambda: not tracker.is_alive(ident.public_key))
        assert tracker.dropped_total == 0


def garbage(rng: random.Random, valid: bytes, n: int) -> list[bytes]:
    """Random bytes, truncations and bit flips of a valid heartbeat, wrong-domain records."""
    other = Identity.generate()
    out: list[bytes] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:
            out.append(valid[: rng.randrange(0, len(valid))])
        elif kind == 2:
            flipped = bytearray(valid)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            out.append(bytes(flipped))
        else:
            out.append(seal(other, Domain.ANNOUNCEMENT, {"status": "online", "i": i}).to_bytes())
    return out


async def test_garbage_flood_is_dropped_and_a_valid_heartbeat_gets_through(broker: EmbeddedBroker) -> None:
    tracker = LivenessTracker()
    ident = Identity.generate("honest")
    hb = Heartbeat(ident, TOPICS)
    junk = garbage(random.Random(7), hb.next_payload(), 1000)
    topic = TOPICS.liveness(ident.network_id)
    async with BusClient(broker.url, "watcher") as watcher, BusClient(broker.url, "attacker") as attacker:
        await watcher.subscribe(TOPICS.liveness_all)
        await asyncio.gather(*(attacker.publish(topic, p, qos=0) for p in junk))
        await hb.beat(attacker)
        await watch_until(
            watcher, tracker, lambda: tracker.accepted + tracker.dropped_total == 1001, timeout=15
        )
    # a bit flip can land in a byte msgpack ignores only if it leaves the envelope valid: impossible
    assert tracker.dropped_total == 1000, tracker.dropped
    assert tracker.accepted == 1 and tracker.is_alive(ident.public_key)
