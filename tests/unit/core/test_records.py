"""Typed protocol records: seal/open, strict decoding, DecodeError on anything malformed."""

from __future__ import annotations

import pytest

from prime.core import encoding
from tests import factories
from prime.core.envelope import Domain, seal
from prime.core.errors import DecodeError, SignatureError
from prime.core.identity import Identity
from prime.core.records import (
    RoundAnnouncement,
    RoundCommitted,
    UpdateRecord,
    dht_announce_name,
    dht_update_name,
)

COORD = Identity.from_seed(b"C" * 32)
TRAINER = Identity.from_seed(b"T" * 32)
D = "ab" * 32


def announcement(**kw) -> RoundAnnouncement:
    return factories.announcement(**{"selected": [TRAINER.public_key], **kw})


def update(**kw) -> UpdateRecord:
    return factories.update(**kw)


def committed(**kw) -> RoundCommitted:
    return factories.committed(**kw)


FACTORIES = [(RoundAnnouncement, announcement), (UpdateRecord, update), (RoundCommitted, committed)]


@pytest.mark.parametrize("cls, make", FACTORIES)
def test_seal_open_round_trip(cls, make):
    record = make()
    data = record.seal(COORD).to_bytes()
    opened, env = cls.open(data, signer=COORD.public_key)
    assert opened == record
    assert type(opened) is cls
    assert env.signer == COORD.public_key and env.domain == cls.DOMAIN.value


@pytest.mark.parametrize("cls, make", FACTORIES)
def test_pinned_signer(cls, make):
    data = make().seal(TRAINER).to_bytes()
    with pytest.raises(SignatureError):
        cls.open(data, signer=COORD.public_key)


def test_records_cannot_cross_domains():
    data = update().seal(TRAINER).to_bytes()
    with pytest.raises(SignatureError):
        RoundAnnouncement.open(data)
    with pytest.raises(SignatureError):
        RoundCommitted.open(data)
    # same payload signed for the right domain but wrong shape: malformed, not a crash
    env = seal(TRAINER, Domain.ANNOUNCEMENT, update().model_dump())
    with pytest.raises(DecodeError, match="malformed RoundAnnouncement"):
        RoundAnnouncement.open(env.to_bytes())


def test_committed_job_finished():
    assert committed(round=5, total_rounds=5).job_finished
    assert not committed(round=4, total_rounds=5).job_finished
    assert not committed(round=99, total_rounds=0).job_finished
    assert committed(metrics={}).metrics == {}


def _sealed(cls, make, **changes) -> bytes:
    """A validly signed envelope whose payload is ``make()`` dumped with ``changes`` applied."""
    payload = {**make().model_dump(), **changes}
    payload = {k: v for k, v in payload.items() if v is not _DROP}
    return seal(TRAINER, cls.DOMAIN, payload).to_bytes()


_DROP = object()


@pytest.mark.parametrize("cls, make", FACTORIES)
def test_extra_field_refused(cls, make):
    with pytest.raises(DecodeError, match="sneaky"):
        cls.open(_sealed(cls, make, sneaky=1))


@pytest.mark.parametrize("cls, make", FACTORIES)
def test_missing_field_refused(cls, make):
    with pytest.raises(DecodeError, match="job_id"):
        cls.open(_sealed(cls, make, job_id=_DROP))


@pytest.mark.parametrize("cls, make", FACTORIES)
@pytest.mark.parametrize("field, value", [("round", "2"), ("round", 2.0), ("round", True), ("round", 0),
                                          ("job_id", 7), ("job_id", b"job"), ("job_id", "j" * 65),
                                          ("issued", "now")])
def test_wrong_types_refused_strictly(cls, make, field, value):
    with pytest.raises(DecodeError, match=field):
        cls.open(_sealed(cls, make, **{field: value}))


@pytest.mark.parametrize(
    "cls, make, field",
    [(RoundAnnouncement, announcement, "model_digest"), (UpdateRecord, update, "blob_digest"),
     (RoundCommitted, committed, "model_digest")],
)
@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, "ab" * 32 + "\n", "", b"\xab" * 32])
def test_bad_digest_strings_refused(cls, make, field, bad):
    with pytest.raises(DecodeError, match=field):
        cls.open(_sealed(cls, make, **{field: bad}))


@pytest.mark.parametrize(
    "field, value",
    [("selected", ["not-bytes"]), ("providers", [b"bytes"]), ("providers", ["p"] * 33),
     ("model_version", -1), ("total_rounds", -1), ("selected", [1])],
)
def test_announcement_field_checks(field, value):
    with pytest.raises(DecodeError, match=field):
        RoundAnnouncement.open(_sealed(RoundAnnouncement, announcement, **{field: value}))


@pytest.mark.parametrize(
    "field, value",
    [("metrics", {"loss": "low"}), ("metrics", {f"m{i}": 1.0 for i in range(17)}), ("num_samples", -1),
     ("providers", ["p"] * 9), ("node_name", "n" * 65), ("blob_size", -5)],
)
def test_update_field_checks(field, value):
    with pytest.raises(DecodeError, match=field):
        UpdateRecord.open(_sealed(UpdateRecord, update, **{field: value}))


def test_committed_model_version_starts_at_one():
    with pytest.raises(DecodeError, match="model_version"):
        RoundCommitted.open(_sealed(RoundCommitted, committed, model_version=0))


@pytest.mark.parametrize("cls", [RoundAnnouncement, UpdateRecord, RoundCommitted])
@pytest.mark.parametrize("payload", [[1, 2], "str", None, 5])
def test_non_dict_payload_refused(cls, payload):
    with pytest.raises(DecodeError):
        cls.open(seal(TRAINER, cls.DOMAIN, payload).to_bytes())


def test_undecodable_payload_refused():
    from prime.core.envelope import Envelope, signing_digest

    payload = b"\xc1\xc1"
    env = Envelope("update", TRAINER.public_key, payload, TRAINER.sign(signing_digest("update", payload)))
    with pytest.raises(DecodeError):
        UpdateRecord.open(env.to_bytes())
    with pytest.raises(DecodeError):
        UpdateRecord.open(encoding.pack({"d": "update"}))


def test_direct_construction_validates():
    with pytest.raises(Exception):
        announcement(model_digest="nope")
    with pytest.raises(Exception):
        update(extra_field=1)


def test_dht_names():
    assert dht_update_name("job", 3) == "job/update/3"
    assert dht_announce_name("job") == "job/announce"


def test_announcement_assigns_one_shard_per_selected_trainer():
    other = Identity.from_seed(b"O" * 32).public_key
    ann = announcement(selected=[TRAINER.public_key, other], shards=[2, 0], num_shards=3)
    assert ann.shard_of(other) == 0 and ann.shard_of(TRAINER.public_key) == 2 and ann.shard_of(b"x" * 32) is None
    payload = ann.model_dump()
    for bad in ({"shards": [1]}, {"shards": [0, 3]}, {"num_shards": 0}):
        with pytest.raises(DecodeError, match="malformed RoundAnnouncement"):
            RoundAnnouncement.open(seal(COORD, Domain.ANNOUNCEMENT, {**payload, **bad}).to_bytes())
