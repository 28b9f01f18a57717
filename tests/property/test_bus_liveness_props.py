"""LivenessTracker.observe never raises, whatever the bytes (invariant 4)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prime.bus.liveness import Heartbeat, HeartbeatRecord, LivenessTracker
from prime.bus.topics import Topics
from prime.core.envelope import Domain, seal
from prime.core.identity import Identity

IDENT = Identity.from_seed(b"\x01" * 32, "prop")
HB = Heartbeat(IDENT, Topics("prop"))
VALID = HB.next_payload()
WILL = HB.will.payload
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(payload: bytes) -> None:
    tracker = LivenessTracker()
    result = tracker.observe(payload)
    assert result is None or isinstance(result, HeartbeatRecord)
    assert tracker.accepted + tracker.dropped_total == 1


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(payload: bytes) -> None:
    check(payload)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([VALID, WILL])))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_valid_heartbeats(payload: bytes) -> None:
    check(payload)


records = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "node": records,
        "status": st.sampled_from(["online", "offline"]) | records,
        "ts": records,
        "seq": records,
        "session": st.binary(min_size=16, max_size=16) | records,
        "info": records,
    },
)


@SETTINGS
@given(st.one_of(records, fields))
def test_validly_signed_records_of_any_shape(record: object) -> None:
    """A correct signature over nonsense is still nonsense: dropped, not raised."""
    check(seal(IDENT, Domain.HEARTBEAT, record).to_bytes())


@SETTINGS
@given(st.lists(st.one_of(mutated(), st.just(VALID), st.just(WILL)), max_size=20))
def test_sequences_keep_the_tracker_consistent(payloads: list[bytes]) -> None:
    tracker = LivenessTracker()
    for p in payloads:
        tracker.observe(p)
    assert tracker.accepted + tracker.dropped_total == len(payloads)
    assert set(tracker.alive()) <= {IDENT.public_key}
