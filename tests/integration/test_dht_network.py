"""DHT nodes on real UDP sockets (127.0.0.1): verified put/get, forged records refused, garbage survived."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import umsgpack
from kademlia.network import Server
from kademlia.node import Node

from prime.core.envelope import Domain, seal
from prime.core.errors import DHTError
from prime.core.identity import Identity
from prime.dht.node import DHTNode
from prime.dht.records import MAX_DHT_RECORD_BYTES, dht_digest, dht_key, make_record

N_NODES = 6
ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)


@pytest.fixture
async def nodes() -> AsyncIterator[list[DHTNode]]:
    boot = await DHTNode.create(timeout=1.0)
    started = [boot]
    try:
        for _ in range(N_NODES - 1):
            started.append(await DHTNode.create(bootstrap=[boot.address], timeout=1.0))
        yield started
    finally:
        for node in started:
            await node.close()


def forged_record(name: str = "job-1/update/3") -> tuple[bytes, bytes]:
    """A record naming ALICE as owner but signed by MALLORY."""
    key = dht_key(ALICE.public_key, name)
    now = time.time()
    payload = {"key": key, "value": {"digest": "ee" * 32}, "issued": now, "expires": now + 600}
    return dht_digest(key), seal(MALLORY, Domain.DHT_RECORD, payload).to_bytes()


def store_datagram(dkey: bytes, value: bytes) -> tuple[bytes, bytes]:
    """What rpcudp would send for STORE, built by hand: kind, msg id, msgpack [name, args]."""
    msg_id = os.urandom(20)
    return msg_id, b"\x00" + msg_id + umsgpack.packb(["store", [os.urandom(20), dkey, value]])


async def send_and_wait_reply(address: tuple[str, int], datagram: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(datagram, address)
        return await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)


async def test_nodes_join_and_get_returns_verified_value(nodes: list[DHTNode]) -> None:
    assert all(node.address[0] == "127.0.0.1" for node in nodes)
    assert all(len(node.peers) == N_NODES - 1 for node in nodes)
    value = {"digest": "ab" * 32, "size": 5_000_000, "providers": [["127.0.0.1", 9000]]}
    await nodes[1].put(ALICE, "job-1/update/3", value, ttl_s=600)
    assert sum(len(n.storage) for n in nodes) >= 2  # the publisher and at least one peer
    for reader in nodes[2:]:
        assert await reader.get(ALICE.public_key, "job-1/update/3") == value
    assert await nodes[3].get(ALICE.public_key, "job-1/update/4") is None
    assert await nodes[3].get(MALLORY.public_key, "job-1/update/3") is None


async def test_newer_version_wins(nodes: list[DHTNode]) -> None:
    await nodes[1].put(ALICE, "job-1/announce", {"round": 1})
    await nodes[2].put(ALICE, "job-1/announce", {"round": 2})
    assert await nodes[4].get(ALICE.public_key, "job-1/announce") == {"round": 2}


async def test_record_signed_by_wrong_key_refused_by_every_node(nodes: list[DHTNode]) -> None:
    dkey, forged = forged_record()
    sender = nodes[0]
    assert not sender.storage.store(dkey, forged)
    for target in nodes[1:]:
        ok, accepted = await sender._server.protocol.call_store(Node(target.node_id, *target.address), dkey, forged)
        assert ok and accepted is False
    assert all(dkey not in node.storage for node in nodes)
    assert all(node.metrics["refused"].get("wrong_owner") == 1 for node in nodes)
    assert await nodes[2].get(ALICE.public_key, "job-1/update/3") is None


async def test_forged_store_from_bare_socket_refused_but_plain_kademlia_accepts(
    nodes: list[DHTNode], loop_errors: list[dict[str, Any]]
) -> None:
    dkey, forged = forged_record()
    victim = nodes[3]
    for value in (forged, b"not a record at all"):
        msg_id, datagram = store_datagram(dkey, value)
        reply = await send_and_wait_reply(victim.address, datagram)
        assert reply == b"\x01" + msg_id + umsgpack.packb(False)
        assert dkey not in victim.storage
    assert victim.metrics["refused"] == {"wrong_owner": 1, "bad_envelope": 1}
    assert set(victim.peers) <= {n.address for n in nodes}  # the forger was not welcomed as a peer

    # the same datagram against stock kademlia: stored, answered True (so this test can fail)
    plain = Server()
    await plain.listen(0, interface="127.0.0.1")
    try:
        address = plain.transport.get_extra_info("sockname")[:2]
        msg_id, datagram = store_datagram(dkey, forged)
        reply = await send_and_wait_reply(address, datagram)
        assert reply == b"\x01" + msg_id + umsgpack.packb(True)
        assert plain.storage.get(dkey) == forged
    finally:
        plain.stop()
        await asyncio.sleep(0.05)
    assert loop_errors == []


def garbage_datagrams(n: int) -> list[bytes]:
    rng = random.Random(1234)

    def rid() -> bytes:
        return rng.randbytes(20)

    makers = [
        lambda: rng.randbytes(rng.randrange(0, 22)),  # too short
        lambda: rng.choice([b"\x02", b"\x7f", b"\xff"]) + rid() + b"\xc0",  # unknown kind
        lambda: b"\x00" + rid() + rng.randbytes(rng.randrange(1, 300)),  # random body
        lambda: b"\x00" + rid() + b"\xc1",  # never-used msgpack byte
        lambda: b"\x00" + rid() + b"\x91" * 5000 + b"\xc0",  # nesting bomb
        lambda: b"\x00" + rid() + b"\xdd\xff\xff\xff\xff",  # huge array header, no body
        lambda: b"\x00" + rid() + umsgpack.packb({"store": 1}),  # wrong shape
        lambda: b"\x00" + rid() + umsgpack.packb(["delete_everything", []]),  # unknown rpc
        lambda: b"\x00" + rid() + umsgpack.packb(["__init__", []]),
        lambda: b"\x00" + rid() + umsgpack.packb(["store", [rid()]]),  # wrong arity
        lambda: b"\x00" + rid() + umsgpack.packb(["store", [1, 2, 3]]),  # wrong types
        lambda: b"\x00" + rid() + umsgpack.packb(["find_value", [rid(), b"short"]]),
        lambda: b"\x00" + rid() + umsgpack.packb(["ping", ["not bytes"]]),
        lambda: b"\x01" + rid() + umsgpack.packb(True),  # reply nobody asked for
        lambda: b"\x00" + rid() + rng.randbytes(9000),  # oversized
    ]
    return [makers[i % len(makers)]() for i in range(n)]


async def test_thousand_garbage_datagrams_leave_node_serving(
    nodes: list[DHTNode], loop_errors: list[dict[str, Any]]
) -> None:
    victim = nodes[2]
    loop = asyncio.get_running_loop()
    batch = garbage_datagrams(1000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for start in range(0, len(batch), 25):  # small bursts: the kernel buffer must not drop any
            for datagram in batch[start : start + 25]:
                sock.sendto(datagram, victim.address)
            deadline = loop.time() + 5
            while sum(victim.metrics["dropped"].values()) < start + len(batch[start : start + 25]):
                assert loop.time() < deadline, victim.metrics
                await asyncio.sleep(0.002)
    dropped = victim.metrics["dropped"]
    assert sum(dropped.values()) == 1000
    assert {"too_short", "unknown_kind", "bad_msgpack", "bad_shape", "unknown_rpc", "bad_arity", "bad_args",
            "unsolicited_response"} <= set(dropped)
    assert "handler_error" not in dropped and victim.metrics["refused"] == {}

    # still a working peer
    await nodes[0].put(ALICE, "job-2/model", {"version": 3})
    assert await victim.get(ALICE.public_key, "job-2/model") == {"version": 3}
    await victim.put(ALICE, "job-2/other", {"ok": True})
    assert await nodes[4].get(ALICE.public_key, "job-2/other") == {"ok": True}
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_lying_peer_cannot_answer_for_a_key() -> None:
    """A peer that answers every lookup with a forged record is ignored and counted."""
    dkey, forged = forged_record("job-1/model")
    liar_id = os.urandom(20)

    class Liar(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            name, _ = umsgpack.unpackb(data[21:])
            reply = {"ping": liar_id, "find_node": [], "store": True}.get(name, {"value": forged})
            self.transport.sendto(b"\x01" + data[1:21] + umsgpack.packb(reply), addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Liar, local_addr=("127.0.0.1", 0))
    honest = await DHTNode.create(timeout=1.0)
    node = await DHTNode.create(bootstrap=[transport.get_extra_info("sockname")[:2], honest.address], timeout=1.0)
    try:
        assert len(node.peers) == 2
        assert await node.get(ALICE.public_key, "job-1/model") is None
        assert node.metrics["bad_values"].get("wrong_owner", 0) >= 1
        await honest.put(ALICE, "job-1/model", {"version": 9})
        assert await node.get(ALICE.public_key, "job-1/model") == {"version": 9}
    finally:
        await node.close()
        await honest.close()
        transport.close()


async def test_lone_node_stores_locally() -> None:
    async with await DHTNode.create(timeout=0.5) as lone:
        await lone.put(ALICE, "job-3/update/0", {"n": 1}, ttl_s=60)
        assert await lone.get(ALICE.public_key, "job-3/update/0") == {"n": 1}
        assert lone.metrics["records"] == 1


async def test_put_refuses_oversize_and_bad_ttl_before_sending(nodes: list[DHTNode]) -> None:
    with pytest.raises(DHTError, match="DHT limit"):
        await nodes[1].put(ALICE, "job-1/big", {"blob": b"x" * MAX_DHT_RECORD_BYTES})
    with pytest.raises(DHTError, match="ttl_too_long"):
        await nodes[1].put(ALICE, "job-1/forever", {}, ttl_s=10 * 86400)
    assert all(len(node.storage) == 0 for node in nodes)


async def test_put_fails_when_no_peer_accepts() -> None:
    async with await DHTNode.create(timeout=0.3) as peer:
        node = await DHTNode.create(bootstrap=[peer.address], timeout=0.3)
        try:
            await peer.close()
            with pytest.raises(DHTError, match="no peer accepted"):
                await node.put(ALICE, "job-1/update/1", {"x": 1})
        finally:
            await node.close()


async def test_unreachable_bootstrap_is_not_fatal(port_factory: Any) -> None:
    async with await DHTNode.create(bootstrap=[("127.0.0.1", port_factory())], timeout=0.2) as node:
        assert node.peers == []
        stale = make_record(ALICE, "job-1/x", {}, ttl_s=60)
        assert node.storage.store(dht_digest(dht_key(ALICE.public_key, "job-1/x")), stale)


async def test_republish_reaches_peers_and_survives_no_peers(nodes: list[DHTNode]) -> None:
    """kademlia's hourly republish goes through our set_digest (its own fails on an empty crawl)."""
    name = "job-4/update/2"
    dkey, raw = dht_digest(dht_key(ALICE.public_key, name)), make_record(ALICE, name, {"r": 1}, ttl_s=600)
    assert await nodes[1]._server.set_digest(dkey, raw)
    assert await nodes[5].get(ALICE.public_key, name) == {"r": 1}
    async with await DHTNode.create(timeout=0.2) as lone:
        assert not await lone._server.set_digest(dkey, raw)
        assert lone.storage.get(dkey) == raw
