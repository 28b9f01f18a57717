"""ValidatingStorage: keeps valid records only, newest per key, within caps, until expiry."""

from __future__ import annotations

import pytest
from kademlia.network import Server

from prime.core.envelope import Domain, seal
from prime.core.identity import Identity
from prime.dht.records import dht_digest, dht_key, make_record
from prime.dht.storage import StorageConfig, ValidatingStorage

NOW = 1_700_000_000.0
ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def rec(who: Identity, name: str, ttl: float = 600, issued: float = NOW, **value: object) -> tuple[bytes, bytes]:
    return dht_digest(dht_key(who.public_key, name)), make_record(who, name, dict(value), ttl, now=issued)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **caps: object) -> ValidatingStorage:
    return ValidatingStorage(StorageConfig(**caps), clock=clock)


def test_accepts_valid_and_implements_istorage(clock: Clock) -> None:
    store = make(clock)
    dkey, raw = rec(ALICE, "job/a", x=1)
    assert store.store(dkey, raw) and store.last_accepted
    assert store[dkey] == raw and store.get(dkey) == raw and dkey in store
    assert list(store) == [(dkey, raw)] and len(store) == 1 and store.total_bytes == len(raw)
    assert store.get_record(dkey).value == {"x": 1}
    assert store.iter_older_than(0) == [(dkey, raw)]
    assert store.iter_older_than(3600) == []
    assert store.metrics.accepted == 1


def test_refuses_invalid_and_counts_reason(clock: Clock) -> None:
    store = make(clock)
    dkey, raw = rec(ALICE, "job/a")
    store[dkey] = b"junk"
    assert not store.last_accepted and store.last_refusal == "bad_envelope"
    forged = seal(BOB, Domain.DHT_RECORD, {"key": dht_key(ALICE.public_key, "job/a"), "value": {},
                                           "issued": NOW, "expires": NOW + 60}).to_bytes()
    assert not store.store(dkey, forged)
    assert not store.store(dkey, 12345)
    assert store.get(dkey) is None and dkey not in store and len(store) == 0
    with pytest.raises(KeyError):
        store[dkey]
    assert store.metrics.refused == {"bad_envelope": 1, "wrong_owner": 1, "not_bytes": 1}


def test_keeps_newest_version(clock: Clock) -> None:
    store = make(clock)
    dkey, v1 = rec(ALICE, "job/a", issued=NOW - 10, v=1)
    _, v2 = rec(ALICE, "job/a", issued=NOW - 5, v=2)
    assert store.store(dkey, v1) and store.store(dkey, v2)
    assert store.get_record(dkey).value == {"v": 2}
    assert not store.store(dkey, v1) and store.last_refusal == "stale"
    assert store.store(dkey, v2)  # republish of the same bytes is fine
    assert len(store) == 1 and store.total_bytes == len(v2)


def test_expired_records_are_culled(clock: Clock) -> None:
    store = make(clock)
    dkey_a, a = rec(ALICE, "job/a", ttl=10)
    dkey_b, b = rec(ALICE, "job/b", ttl=100)
    store[dkey_a], store[dkey_b] = a, b
    clock.now += 50
    assert store.get(dkey_a) is None and store.get(dkey_b) == b
    assert store.metrics.expired == 1 and len(store) == 1
    clock.now += 100
    assert list(store) == [] and store.total_bytes == 0


def test_superseded_version_does_not_expire_the_newer(clock: Clock) -> None:
    store = make(clock)
    dkey, short = rec(ALICE, "job/a", ttl=10, issued=NOW - 1)
    _, long = rec(ALICE, "job/a", ttl=1000)
    store[dkey], store[dkey] = short, long
    clock.now += 20
    assert store.get(dkey) == long


def test_record_cap_refuses_new_until_something_expires(clock: Clock) -> None:
    store = make(clock, max_records=2)
    keys = [rec(ALICE, f"job/{i}", ttl=10 + 100 * i) for i in range(3)]
    assert [store.store(k, v) for k, v in keys] == [True, True, False]
    assert store.last_refusal == "full"
    dkey0, _ = keys[0]
    _, newer0 = rec(ALICE, "job/0", ttl=10, issued=NOW + 1)
    assert store.store(dkey0, newer0)  # replacing an existing key is always allowed
    clock.now += 11.5  # job/0 (the newer copy, issued NOW+1, ttl 10) expires
    assert store.store(*keys[2])
    assert len(store) == 2


def test_byte_cap(clock: Clock) -> None:
    dkey, small = rec(ALICE, "job/a")
    store = make(clock, max_bytes=len(small) * 2 + 10)
    assert store.store(dkey, small)
    assert not store.store(*rec(ALICE, "job/big", pad="x" * 2 * len(small)))
    assert store.last_refusal == "full"
    assert store.store(*rec(BOB, "job/b"))
    _, bigger = rec(ALICE, "job/a", issued=NOW + 1, pad="x" * 100)
    assert not store.store(dkey, bigger) and store.get(dkey) == small  # old version kept


def test_per_owner_cap(clock: Clock) -> None:
    store = make(clock, max_per_owner=2)
    assert store.store(*rec(ALICE, "job/1")) and store.store(*rec(ALICE, "job/2"))
    assert not store.store(*rec(ALICE, "job/3")) and store.last_refusal == "owner_full"
    assert store.store(*rec(BOB, "job/1"))
    assert store.metrics.refused["owner_full"] == 1


def test_ttl_beyond_storage_limit_refused(clock: Clock) -> None:
    store = make(clock, max_ttl_s=60)
    assert not store.store(*rec(ALICE, "job/a", ttl=3600))
    assert store.last_refusal == "ttl_too_long"


def test_kademlia_server_keeps_an_empty_validating_storage() -> None:
    storage = ValidatingStorage()
    assert Server(storage=storage).storage is storage
