"""Signed DHT records: a valid one round-trips; every kind of bad one is refused with its reason."""

from __future__ import annotations

import time

import pytest
import umsgpack

from prime.core.envelope import Domain, seal
from prime.core.errors import DecodeError, DHTError, SignatureError
from prime.core.identity import Identity
from prime.dht.records import (
    MAX_DHT_RECORD_BYTES,
    RPC_MAX_BYTES,
    ForgedRecord,
    InvalidRecord,
    dht_digest,
    dht_key,
    make_record,
    validate_record,
)

NOW = 1_700_000_000.0
MAX_TTL = 86_400.0
ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
NAME = "job-1/update/3"
KEY = dht_key(ALICE.public_key, NAME)
DKEY = dht_digest(KEY)


def forge(signer: Identity, payload: object, domain: Domain = Domain.DHT_RECORD) -> bytes:
    return seal(signer, domain, payload).to_bytes()


def payload(**changes: object) -> dict:
    base = {"key": KEY, "value": {"digest": "ab" * 32}, "issued": NOW, "expires": NOW + 600}
    base.update(changes)
    return base


def reason_of(dkey: bytes, data: object, now: float = NOW) -> str:
    with pytest.raises(InvalidRecord) as info:
        validate_record(dkey, data, now, MAX_TTL)
    assert isinstance(info.value, DecodeError)
    return info.value.reason


def test_valid_record_round_trips() -> None:
    raw = make_record(ALICE, NAME, {"digest": "ab" * 32, "size": 7}, ttl_s=600, now=NOW)
    record = validate_record(DKEY, raw, NOW + 1, MAX_TTL)
    assert record.key == KEY and record.name == NAME and record.dkey == DKEY
    assert record.owner == ALICE.public_key
    assert record.value == {"digest": "ab" * 32, "size": 7}
    assert (record.issued, record.expires) == (NOW, NOW + 600)
    assert record.raw == raw


def test_key_format() -> None:
    assert KEY == f"prime/{ALICE.public_key_hex}/{NAME}"
    for bad in ["", "/x", "x/", "a//b", "a b", "ü", "x" * 201, "a/../b\n"]:
        with pytest.raises(DHTError):
            dht_key(ALICE.public_key, bad)
    with pytest.raises(DHTError):
        dht_key(b"short", NAME)


def test_max_record_fits_one_store_rpc_exactly() -> None:
    assert MAX_DHT_RECORD_BYTES == 8137
    for size, fits in [(MAX_DHT_RECORD_BYTES, True), (MAX_DHT_RECORD_BYTES + 1, False)]:
        rpc = umsgpack.packb(["store", (bytes(20), bytes(20), bytes(size))])
        assert (len(rpc) <= RPC_MAX_BYTES) is fits


def test_too_large_record_refused_before_sending() -> None:
    with pytest.raises(DHTError, match="over the 8137-byte DHT limit"):
        make_record(ALICE, NAME, {"blob": b"x" * MAX_DHT_RECORD_BYTES}, ttl_s=60)
    # just under the limit is fine
    overhead = len(make_record(ALICE, NAME, {"blob": b""}, ttl_s=60, now=NOW))
    raw = make_record(ALICE, NAME, {"blob": b"x" * (MAX_DHT_RECORD_BYTES - overhead - 2)}, ttl_s=60, now=NOW)
    assert len(raw) <= MAX_DHT_RECORD_BYTES


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan"), "60"])
def test_bad_ttl_refused(ttl: object) -> None:
    with pytest.raises(DHTError):
        make_record(ALICE, NAME, {}, ttl_s=ttl)  # type: ignore[arg-type]


def test_unencodable_value_refused() -> None:
    with pytest.raises(DHTError, match="not encodable"):
        make_record(ALICE, NAME, {"x": object()}, ttl_s=60)
    with pytest.raises(DHTError, match="must be a dict"):
        make_record(ALICE, NAME, ["x"], ttl_s=60)  # type: ignore[arg-type]


def test_refusal_reasons() -> None:
    good = forge(ALICE, payload())
    assert validate_record(DKEY, good, NOW, MAX_TTL).value == {"digest": "ab" * 32}
    flipped = bytearray(good)
    flipped[-1] ^= 1  # last byte is inside the signature
    cases = {
        "not_bytes": (DKEY, "a string"),
        "oversize": (DKEY, b"\x00" * (MAX_DHT_RECORD_BYTES + 1)),
        "bad_envelope": (DKEY, b"\xff\x00garbage"),
        "bad_signature": (DKEY, bytes(flipped)),
        "key_mismatch": (dht_digest("prime/other"), good),
        "wrong_owner": (DKEY, forge(MALLORY, payload())),
        "bad_payload": (DKEY, forge(ALICE, ["not", "a", "map"])),
        "expired": (DKEY, forge(ALICE, payload(issued=NOW - 700, expires=NOW - 1))),
        "ttl_too_long": (DKEY, forge(ALICE, payload(expires=NOW + 10 * MAX_TTL))),
        "issued_in_future": (DKEY, forge(ALICE, payload(issued=NOW + 3600, expires=NOW + 4000))),
    }
    for expected, (dkey, data) in cases.items():
        assert reason_of(dkey, data) == expected, expected


def test_other_domain_is_a_bad_signature() -> None:
    assert reason_of(DKEY, forge(ALICE, payload(), domain=Domain.UPDATE)) == "bad_signature"


@pytest.mark.parametrize(
    "changes",
    [
        {"value": "not a map"},
        {"issued": True},
        {"expires": float("nan")},
        {"expires": NOW - 5},  # expires before issued
        {"extra": 1},
    ],
)
def test_bad_payload_fields(changes: dict) -> None:
    assert reason_of(DKEY, forge(ALICE, payload(**changes))) == "bad_payload"


@pytest.mark.parametrize(
    "key", ["prime/nothex/x", "other/" + ALICE.public_key_hex + "/x", f"prime/{ALICE.public_key_hex}/a b"]
)
def test_malformed_key(key: str) -> None:
    assert reason_of(dht_digest(key), forge(ALICE, payload(key=key))) == "bad_key"


def test_forgeries_are_signature_errors() -> None:
    with pytest.raises(SignatureError) as info:
        validate_record(DKEY, forge(MALLORY, payload()), NOW, MAX_TTL)
    assert isinstance(info.value, ForgedRecord) and info.value.reason == "wrong_owner"


def test_default_now_is_wall_clock() -> None:
    raw = make_record(ALICE, NAME, {}, ttl_s=60)
    record = validate_record(DKEY, raw, time.time(), MAX_TTL)
    assert abs(record.issued - time.time()) < 5
