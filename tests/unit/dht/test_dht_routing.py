"""What a node knows about peers: closest-first neighbours, bounded dead-peer memory, RTT-based overdue."""

from __future__ import annotations

import random

import pytest
from kademlia.node import Node

from prime.dht import routing
from prime.dht.protocol import ValidatingProtocol, _hands_over
from prime.dht.routing import DeadPeers, RttEstimator
from prime.dht.storage import ValidatingStorage
from tests.dhtutil import RecordingTransport


def node(rng: random.Random, port: int) -> Node:
    return Node(rng.randbytes(20), "127.0.0.1", port)


async def test_find_neighbors_returns_the_k_closest_contacts() -> None:
    """kademlia's bucket walk returns the first k it meets, not the k closest (bmuller/kademlia#28)."""
    rng = random.Random(7)
    protocol = ValidatingProtocol(Node(rng.randbytes(20)), ValidatingStorage(), ksize=8)
    protocol.connection_made(RecordingTransport())  # type: ignore[arg-type]
    for i in range(300):
        protocol.router.add_contact(node(rng, 10_000 + i))
    held = [n for bucket in protocol.router.buckets for n in bucket.get_nodes()]
    assert len(held) > 8 * 3  # several buckets, so the walk order matters
    for _ in range(200):
        target = Node(rng.randbytes(20))
        expected = sorted(held, key=target.distance_to)[:8]
        assert [n.id for n in protocol.router.find_neighbors(target)] == [n.id for n in expected]
    # full buckets ping their oldest contact: as tracked tasks, ended at shutdown
    assert protocol._tasks
    await protocol.shutdown()
    assert not protocol._tasks


def test_find_neighbors_excludes_the_asker_and_the_target() -> None:
    rng = random.Random(8)
    protocol = ValidatingProtocol(Node(rng.randbytes(20)), ValidatingStorage(), ksize=4)
    contacts = [node(rng, 20_000 + i) for i in range(6)]
    for contact in contacts:
        protocol.router.add_contact(contact)
    found = protocol.router.find_neighbors(contacts[0], exclude=contacts[1])
    assert contacts[0].id not in {n.id for n in found} and contacts[1].id not in {n.id for n in found}
    assert len(found) == 4


def test_unanswered_call_marks_dead_and_evicts_answer_revives() -> None:
    rng = random.Random(9)
    protocol = ValidatingProtocol(Node(rng.randbytes(20)), ValidatingStorage(), ksize=4)
    peer = node(rng, 30_000)
    protocol.router.add_contact(peer)
    protocol.handle_call_response((False, None), peer)
    assert peer.id in protocol.dead and protocol.router.is_new_node(peer)
    protocol.handle_call_response((True, b"x" * 20), peer)  # it answered after all
    assert peer.id not in protocol.dead and not protocol.router.is_new_node(peer)


def test_dead_peers_expire_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(routing.time, "monotonic", lambda: now[0])
    dead = DeadPeers(ttl_s=10.0, max_peers=3)
    for i in range(5):
        dead.add(bytes([i]) * 20)
    assert len(dead) == 3 and bytes([0]) * 20 not in dead and bytes([4]) * 20 in dead
    now[0] += 11
    assert bytes([4]) * 20 not in dead


def test_rtt_estimator_overdue_tracks_replies_within_floor_and_timeout() -> None:
    rtt = RttEstimator(ceiling_s=2.0)
    assert rtt.overdue_s == 2.0  # nothing heard yet: the RPC timeout
    for _ in range(50):
        rtt.observe(0.001)
    assert rtt.overdue_s == routing.MIN_OVERDUE_S
    for _ in range(50):
        rtt.observe(0.2)
    assert 0.2 <= rtt.overdue_s < 1.0
    for _ in range(50):
        rtt.observe(30.0)
    assert rtt.overdue_s == 2.0


async def test_hand_over_rule_matches_kademlias_neighbour_formulation() -> None:
    """welcome_if_new decides from one flat contact list; same answer as kademlia's per-record search."""
    rng = random.Random(11)
    protocol = ValidatingProtocol(Node(rng.randbytes(20)), ValidatingStorage(), ksize=5)
    protocol.connection_made(RecordingTransport())  # type: ignore[arg-type]
    for i in range(60):
        protocol.router.add_contact(node(rng, 40_000 + i))
    contacts = [c.long_id for c in protocol.router.contacts()]
    own = protocol.source_node
    agreed = {True: 0, False: 0}
    for _ in range(2000):
        key, newcomer = Node(rng.randbytes(20)), node(rng, 50_000)
        if rng.random() < 0.5:  # keys near our own id, where we are often the closest
            key = Node((own.long_id ^ rng.getrandbits(rng.randrange(1, 160))).to_bytes(20, "big"))
        neighbors = protocol.router.find_neighbors(key)
        expected = (
            newcomer.distance_to(key) < neighbors[-1].distance_to(key)
            and own.distance_to(key) < neighbors[0].distance_to(key)
        )
        got = _hands_over(own.long_id, newcomer.long_id, key.long_id, contacts, 5)
        assert got == expected
        agreed[got] += 1
    assert agreed[True] > 10 and agreed[False] > 10  # both branches exercised
    await protocol.shutdown()
