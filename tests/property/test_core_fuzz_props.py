"""Hostile bytes into every core decoder raise DecodeError (or a subclass) and nothing else."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core import encoding, parcel
from prime.core.envelope import Domain, open_envelope
from prime.core.errors import DecodeError
from prime.core.identity import Identity
from prime.core.records import RoundAnnouncement, RoundCommitted, UpdateRecord
from prime.core.tensors import decode_state
from safetensors.torch import load as safetensors_load

SETTINGS = settings(max_examples=200, deadline=None)
ID = Identity.from_seed(b"f" * 32)


def only_decode_error(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except DecodeError:
        pass


DECODERS = [
    pytest.param(lambda b: open_envelope(b, Domain.UPDATE), id="open_envelope"),
    pytest.param(encoding.unpack, id="unpack"),
    pytest.param(RoundAnnouncement.open, id="RoundAnnouncement.open"),
    pytest.param(UpdateRecord.open, id="UpdateRecord.open"),
    pytest.param(RoundCommitted.open, id="RoundCommitted.open"),
    pytest.param(lambda b: parcel.unpack(b, max_blob_bytes=64), id="parcel.unpack"),
    pytest.param(lambda b: decode_state(b, max_bytes=1 << 16), id="decode_state"),
]


@pytest.mark.parametrize("decoder", DECODERS)
@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(decoder, data):
    only_decode_error(decoder, data)


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=12),
              st.binary(max_size=70)),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=12,
)


@st.composite
def envelope_like(draw) -> bytes:
    """Well-formed msgpack shaped like an envelope, with arbitrary field values."""
    fields = {
        "d": draw(st.one_of(st.sampled_from([d.value for d in Domain]), msgpack_values)),
        "s": draw(st.one_of(st.just(ID.public_key), st.binary(min_size=32, max_size=32), msgpack_values)),
        "p": draw(st.one_of(st.builds(encoding.pack, msgpack_values), msgpack_values)),
        "g": draw(st.one_of(st.binary(min_size=64, max_size=64), msgpack_values)),
    }
    keep = draw(st.sets(st.sampled_from(sorted(fields)), min_size=3))
    obj = {k: v for k, v in fields.items() if k in keep}
    if draw(st.booleans()):
        obj[draw(st.text(max_size=3))] = draw(msgpack_values)
    return encoding.pack(obj)


@pytest.mark.parametrize("decoder", DECODERS[:6])
@settings(max_examples=100, deadline=None)
@given(envelope_like())
def test_envelope_shaped_input(decoder, data):
    only_decode_error(decoder, data)


@st.composite
def signed_payloads(draw) -> bytes:
    """Correctly signed envelopes whose payload is an arbitrary (often almost-right) record."""
    from prime.core.envelope import seal

    base = {"job_id": "j", "round": 1, "model_version": 1, "model_digest": "ab" * 32, "model_size": 1,
            "providers": [], "selected": [], "deadline": 1.0, "issued": 1.0, "total_rounds": 0,
            "node_name": "n", "blob_digest": "cd" * 32, "blob_size": 1, "num_samples": 1, "metrics": {},
            "participants": 1, "term": 1, "expires": 2.0, "checkpoint_digest": "ef" * 32,
            "mirrored_round": 0, "shards": [], "num_shards": 1, "config_digest": "0f" * 32, "shard": None}
    keys = draw(st.sets(st.sampled_from(sorted(base))))
    record = {k: base[k] for k in keys}
    for k in draw(st.sets(st.sampled_from(sorted(base)), max_size=3)):
        record[k] = draw(msgpack_values)
    domain = draw(st.sampled_from([Domain.ANNOUNCEMENT, Domain.UPDATE, Domain.COMMITTED]))
    return seal(ID, domain, record).to_bytes()


@pytest.mark.parametrize("cls", [RoundAnnouncement, UpdateRecord, RoundCommitted])
@settings(max_examples=100, deadline=None)
@given(signed_payloads())
def test_signed_arbitrary_records(cls, data):
    try:
        record, _ = cls.open(data)
    except DecodeError:
        return
    assert isinstance(record, cls)
    assert cls.open(record.seal(ID).to_bytes())[0] == record


@st.composite
def safetensors_like(draw) -> bytes:
    """An 8-byte header length + JSON header (valid-looking or not) + a body."""
    dtype = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "X9", ""])
    small = st.integers(-3, 2**20)
    big = st.one_of(small, st.integers(2**31, 2**64 + 5))
    entry = st.fixed_dictionaries(
        {"dtype": dtype, "shape": st.lists(big, max_size=4), "data_offsets": st.lists(big, min_size=0, max_size=3)}
    )
    header = draw(st.dictionaries(st.text(max_size=6), entry, max_size=3))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    text = json.dumps(header).encode()
    declared = draw(st.one_of(st.just(len(text)), st.integers(0, 2**64 - 1)))
    body = draw(st.binary(max_size=64))
    blob = declared.to_bytes(8, "little") + text + body
    if draw(st.booleans()):
        blob = b"PRZ1" + zlib.compress(blob)
    return blob


@settings(max_examples=300, deadline=None)
@given(safetensors_like())
def test_safetensors_shaped_input(data):
    only_decode_error(decode_state, data, max_bytes=1 << 16)


@SETTINGS
@given(st.binary(max_size=2000), st.integers(1, 4000))
def test_compressed_random_payload_respects_cap(raw, cap):
    blob = b"PRZ1" + zlib.compress(raw)
    try:
        state = decode_state(blob, max_bytes=cap)
    except DecodeError:
        return
    assert len(raw) <= cap
    assert isinstance(state, dict)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["e", "b", "d", "x"]), msgpack_values, max_size=3))
def test_parcel_shaped_input(fields):
    """Parcels with missing, extra or mistyped fields: a DecodeError, or an (envelope, blob) pair in bounds."""
    try:
        envelope, blob = parcel.unpack(encoding.pack(fields), max_blob_bytes=64)
    except DecodeError:
        return
    assert isinstance(envelope, bytes) and isinstance(blob, bytes) and len(blob) <= 64


@st.composite
def almost_safetensors(draw) -> bytes:
    """A valid safetensors layout, then maybe one field bent (shape, offsets, dtype, lengths)."""
    names = draw(st.lists(st.text("abc.", min_size=1, max_size=4), unique=True, max_size=4))
    sizes = {"F32": 4, "F16": 2, "I64": 8, "U8": 1, "BOOL": 1, "F64": 8}
    header, offset = {}, 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(sizes)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        nbytes = sizes[dtype] * (math.prod(shape))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = bytearray(draw(st.binary(min_size=offset, max_size=offset)))
    for entry in header.values():  # bools must be 0/1 for both decoders to agree byte for byte
        if entry["dtype"] == "BOOL":
            begin, end = entry["data_offsets"]
            body[begin:end] = bytes(b & 1 for b in body[begin:end])
    if names and draw(st.booleans()):
        entry = header[draw(st.sampled_from(names))]
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        entry[field] = draw({"dtype": st.sampled_from(["F32", "I8", "X1"]),
                             "shape": st.lists(st.integers(-1, 4), max_size=3),
                             "data_offsets": st.lists(st.integers(-1, offset + 2), min_size=1, max_size=3)}[field])
    if draw(st.booleans()):
        body += draw(st.binary(min_size=1, max_size=3))
    text = json.dumps(header).encode()
    text += b" " * draw(st.integers(0, 7))
    return len(text).to_bytes(8, "little") + text + bytes(body)


@settings(max_examples=400, deadline=None)
@given(almost_safetensors())
def test_zero_copy_decoder_agrees_with_safetensors(data):
    """Decoding a writable buffer (views, no copy) accepts exactly what safetensors accepts, with equal tensors."""
    try:
        expected = safetensors_load(data)
    except Exception:
        expected = None
    try:
        got = decode_state(bytearray(data), max_bytes=1 << 16)
    except DecodeError:
        got = None
    assert (got is None) == (expected is None), (data, got, expected)
    if got is not None:
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
            assert got[name].reshape(-1).view(torch.uint8).equal(tensor.reshape(-1).view(torch.uint8))
