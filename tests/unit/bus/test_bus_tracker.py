"""LivenessTracker logic: online, offline Will, expiry, replays, garbage counting."""

from __future__ import annotations

import pytest

from prime.bus.liveness import Heartbeat, LivenessTracker
from prime.bus.topics import Topics
from prime.core.envelope import Domain, seal
from prime.core.identity import Identity

TOPICS = Topics("job")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> LivenessTracker:
    return LivenessTracker(timeout_s=10.0, clock=clock)


def node(name: str = "n1", **kw: object) -> Heartbeat:
    return Heartbeat(Identity.generate(name), TOPICS, **kw)  # type: ignore[arg-type]


def test_heartbeat_marks_node_alive_then_it_expires(tracker: LivenessTracker, clock: FakeClock) -> None:
    hb = node(info={"round": 3})
    rec = tracker.observe(hb.next_payload())
    assert rec is not None and rec.online and rec.node == "n1" and rec.seq == 1 and rec.info == {"round": 3}
    key = hb.identity.public_key
    assert rec.pubkey == key and rec.network_id == hb.identity.network_id
    assert tracker.is_alive(key) and set(tracker.alive()) == {key}
    clock.now += 9.9
    assert tracker.is_alive(key)
    clock.now += 0.2
    assert not tracker.is_alive(key) and tracker.alive() == {}
    assert tracker.alive(within_s=60) and tracker.is_alive(key, within_s=60)
    tracker.observe(hb.next_payload())
    assert tracker.is_alive(key)


def test_offline_will_marks_dead_immediately(tracker: LivenessTracker) -> None:
    hb = node()
    tracker.observe(hb.next_payload())
    rec = tracker.observe(hb.will.payload)
    assert rec is not None and rec.status == "offline"
    assert not tracker.is_alive(hb.identity.public_key)
    assert tracker.last(hb.identity.public_key) == rec
    # the session is over: a late heartbeat of that session cannot resurrect it
    assert tracker.observe(hb.next_payload()) is None
    assert tracker.dropped["stale"] == 1


def test_restarted_node_comes_back_and_old_will_cannot_kill_it(tracker: LivenessTracker) -> None:
    ident = Identity.generate("n")
    old = Heartbeat(ident, TOPICS)
    tracker.observe(old.next_payload())
    new = Heartbeat(ident, TOPICS)  # same key, new session, later ts
    assert tracker.observe(new.next_payload()) is not None
    assert tracker.observe(old.will.payload) is None  # old session's Will, delivered late
    assert tracker.is_alive(ident.public_key)
    assert tracker.observe(new.will.payload) is not None
    assert not tracker.is_alive(ident.public_key)


def test_replayed_heartbeat_is_dropped(tracker: LivenessTracker) -> None:
    hb = node()
    first = hb.next_payload()
    second = hb.next_payload()
    assert tracker.observe(second) is not None
    assert tracker.observe(first) is None
    assert tracker.observe(second) is None
    assert tracker.dropped == {"stale": 2} and tracker.accepted == 1


def test_will_of_unseen_node_is_recorded_offline(tracker: LivenessTracker) -> None:
    hb = node()
    assert tracker.observe(hb.will.payload) is not None
    assert not tracker.is_alive(hb.identity.public_key) and tracker.alive() == {}


def test_garbage_is_dropped_and_counted_by_reason(tracker: LivenessTracker) -> None:
    ident = Identity.generate()
    good = node().next_payload()
    wrong_domain = seal(ident, Domain.ANNOUNCEMENT, {"status": "online"}).to_bytes()
    bad_schema = seal(ident, Domain.HEARTBEAT, {"status": "dancing"}).to_bytes()
    flipped = bytearray(good)
    flipped[-1] ^= 1
    for payload in [b"", b"\xff" * 10, b"garbage", b"x" * 100_000, bytes(flipped), wrong_domain, bad_schema]:
        assert tracker.observe(payload) is None
    assert tracker.observe("not bytes") is None  # type: ignore[arg-type]
    assert tracker.dropped_total == 8
    assert tracker.dropped["bad_signature"] == 2 and tracker.dropped["malformed"] == 6
    assert tracker.accepted == 0 and tracker.alive() == {}


def test_memory_is_bounded_by_max_nodes(clock: FakeClock) -> None:
    tracker = LivenessTracker(max_nodes=3, clock=clock)
    nodes = [node(f"n{i}") for i in range(5)]
    for hb in nodes:
        clock.now += 1
        tracker.observe(hb.next_payload())
    assert set(tracker.alive()) == {hb.identity.public_key for hb in nodes[2:]}
    assert tracker.evicted == 2 and tracker.dropped_total == 0


def test_heartbeat_records_carry_the_session_and_rising_seq() -> None:
    hb = node(name="trainer-7", info=lambda: {"load": 0.5})
    tracker = LivenessTracker()
    recs = [tracker.observe(hb.next_payload()) for _ in range(3)]
    assert [r.seq for r in recs if r] == [1, 2, 3]
    assert {r.session for r in recs if r} == {hb.session}
    assert recs[0] is not None and recs[0].info == {"load": 0.5} and recs[0].node == "trainer-7"
    assert hb.will.topic == TOPICS.liveness(hb.identity.network_id) and hb.will.retain is False
    with pytest.raises(ValueError):
        node(interval=0)
