"""Hostile input into the manifest decoder, the new signed update fields and budget notices: a
DecodeError or a record within its bounds, nothing else; and budget arithmetic invariants."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core.budget import BudgetConfig, BudgetNotice, Spend, capped_device_seconds, crossings
from prime.core.envelope import Domain, seal
from prime.core.errors import DecodeError
from prime.core.identity import Identity
from prime.core.manifest import Manifest, canonical, decode
from prime.core.records import UpdateRecord

ID = Identity.from_seed(b"m" * 32)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=10,
)
GOOD = {"format": 1, "job_id": "j", "dataset": {"name": "d", "version": "1"}, "shards": {"0": {"a.bin": "ab" * 32}},
        "seed": 0, "compute_target": "", "prime_version": "0.1.0",
        "task": {"entry_point": "digits", "source_digest": "cd" * 32, "source_file": "prime/tasks/digits.py"}}


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_into_the_manifest_decoder(data):
    try:
        decode(data)
    except DecodeError:
        pass


@st.composite
def manifest_like(draw) -> bytes:
    """The good manifest with some fields dropped or replaced by arbitrary JSON, at any depth of one level."""
    doc = json.loads(json.dumps(GOOD))
    for key in draw(st.sets(st.sampled_from(sorted(GOOD)), max_size=3)):
        if draw(st.booleans()):
            doc.pop(key)
        else:
            doc[key] = draw(json_values)
    if draw(st.booleans()):
        doc["shards"] = draw(st.dictionaries(st.text(max_size=4), st.dictionaries(st.text(max_size=5), json_values,
                                                                                  max_size=2), max_size=2))
    return json.dumps(doc).encode()


@settings(max_examples=100, deadline=None)
@given(manifest_like())
def test_manifest_shaped_input_decodes_strictly_or_not_at_all(data):
    try:
        manifest = decode(data)
    except DecodeError:
        return
    assert isinstance(manifest, Manifest) and decode(canonical(manifest)) == manifest
    assert all(len(d) == 64 for files in manifest.shards.values() for d in files.values())


BASE_UPDATE = dict(job_id="j", term=1, round=1, model_version=0, node_name="n", blob_digest="cd" * 32, blob_size=1,
                   codec="fp32", num_samples=1, shard=None, metrics={}, providers=[], issued=1.0, expires=2.0)
NEW_FIELDS = ("device_seconds", "devices", "device_kind", "peak_memory_bytes")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(NEW_FIELDS),
                       st.one_of(json_values, st.floats(), st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8)),
                       max_size=4))
def test_signed_updates_with_arbitrary_budget_fields(fields):
    data = seal(ID, Domain.UPDATE, {**BASE_UPDATE, **fields}).to_bytes()
    try:
        record, _ = UpdateRecord.open(data)
    except DecodeError:
        return
    assert record.device_seconds is None or 0 <= record.device_seconds <= 1e12
    assert 1 <= record.devices <= 65536
    assert record.peak_memory_bytes is None or 0 <= record.peak_memory_bytes <= 1 << 62
    assert record.device_kind is None or (0 < len(record.device_kind) <= 48 and record.device_kind.isascii())
    assert UpdateRecord.open(record.seal(ID).to_bytes())[0] == record


BASE_NOTICE = dict(job_id="j", term=1, round=1, event="threshold", limit_name="rounds", spent=1.0, limit=2.0,
                   issued=1.0, expires=2.0)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(BASE_NOTICE)), json_values, max_size=3),
       st.sampled_from([Domain.BUDGET, Domain.UPDATE]))
def test_budget_notices_decode_strictly(fields, domain):
    data = seal(ID, domain, {**BASE_NOTICE, **fields}).to_bytes()
    try:
        notice, _ = BudgetNotice.open(data, signer=ID.public_key)
    except DecodeError:
        return
    assert domain == Domain.BUDGET and notice.event in ("threshold", "stop")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.floats(allow_nan=True)), st.integers(1, 64), st.floats(0, 1e6))
def test_counted_device_time_never_exceeds_the_round_on_its_devices(claimed, devices, wall):
    counted, _ = capped_device_seconds(claimed, devices, wall)
    assert 0 <= counted <= wall * devices


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 50), min_size=1, max_size=30), st.floats(1, 500), st.floats(0.05, 1.0))
def test_each_limit_crosses_its_threshold_at_most_once(steps, limit, notify_at):
    config = BudgetConfig(wall_seconds=limit, notify_at=notify_at)
    spend, seen = Spend(), []
    for step in steps:
        after = spend.plus(Spend(1, step))
        seen += [name for name, _, _ in crossings(config, spend, after)]
        spend = after
    assert seen == (["wall_seconds"] if spend.wall_seconds >= notify_at * limit else [])
