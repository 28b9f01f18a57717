"""Hostile bytes into every codec's decoder: ``DecodeError`` only, and never more decoded than the bound.

Random bytes, valid blobs with bytes flipped or cut, and valid blobs whose header is rewritten
(shapes, dtypes, offsets, codec parameters, top-k index parts) must either decode to at most
``max_decoded_bytes`` or raise ``DecodeError``; peak memory stays near the blobs' own size even
though the forged headers claim up to 2^62-value tensors.
"""

from __future__ import annotations

import json
import resource

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prime import codecs
from prime.core import tensors
from prime.core.errors import DecodeError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BYTES = 1 << 16
MAX_DECODED = 1 << 20  # what every decode here may produce at most
CODECS = [codecs.FP32(), codecs.FP16(), codecs.BF16(), codecs.Int8(block_size=16), codecs.UInt8(),
          codecs.TopK(fraction=0.2)]


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(12, 5, generator=g), "b": torch.randn(5, generator=g), "n": torch.tensor([3]),
            "e": torch.zeros(0)}


VALID = {c.describe(): b"".join(codecs.encode(c, sample_state())) for c in CODECS}


def bounded_decode(data: bytes, expect=None) -> None:
    """Decode; only DecodeError may escape, and what decodes stays within the bound."""
    try:
        update = codecs.open_update(data, max_bytes=MAX_BYTES, max_decoded_bytes=MAX_DECODED, expect=expect)
    except DecodeError:
        return
    assert update.nbytes <= MAX_DECODED
    total = 0
    for name in update:
        value = update[name]
        assert tuple(value.shape) == tuple(update.shapes[name])
        total += value.numel() * value.element_size()
    assert total == update.nbytes <= MAX_DECODED


@pytest.fixture(scope="module", autouse=True)
def peak_memory_stays_small():
    """Forged headers claim tensors of up to 2^62 values; none may ever be allocated."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 256, f"peak RSS grew {grown_mib:.0f} MiB while decoding hostile blobs"


@pytest.mark.parametrize("expect", [None, *CODECS], ids=lambda c: "any" if c is None else c.describe())
@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes(expect, data):
    bounded_decode(data, expect)


@pytest.mark.parametrize("name", list(VALID))
@SETTINGS
@given(st.data())
def test_flipped_and_truncated_blobs(name, data):
    blob = bytearray(VALID[name])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    bounded_decode(bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob))


def split(blob: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + body


dims = st.one_of(st.integers(0, 40), st.integers(0, 2**62), st.integers(-3, 2**64))
json_scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8), st.none())
mutations = st.one_of(
    st.tuples(st.just("shape"), st.lists(dims, max_size=5)),
    st.tuples(st.just("dtype"), st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "I32", "I64", "F64", "BOOL", "X"])),
    st.tuples(st.just("data_offsets"), st.lists(st.integers(-5, 5000), min_size=0, max_size=3)),
    st.tuples(st.just("meta"), st.tuples(st.sampled_from(["prime.codec", "prime.format", "prime.param.block_size",
                                                          "prime.param.fraction", "prime.param.extra"]),
                                         st.one_of(st.text(max_size=12), st.sampled_from(
                                             ["int8", "topk", "fp16", "0", "1", "1e308", "nan", "-1", "0.5",
                                              "99999999999999999999"])))),
    st.tuples(st.just("drop"), st.just(None)),
    st.tuples(st.just("raw"), json_scalars),
)


@pytest.mark.parametrize("name", list(VALID))
@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 100), mutations), min_size=1, max_size=4))
def test_rewritten_headers(name, edits):
    header, body = split(VALID[name])
    for which, (kind, value) in edits:
        keys = sorted(k for k in header if k != "__metadata__")
        key = keys[which % len(keys)]
        if kind == "meta":
            header.setdefault("__metadata__", {})[value[0]] = value[1]
        elif kind == "drop":
            header.pop(key)
        elif kind == "raw":
            header[key] = value
        elif isinstance(header.get(key), dict):
            header[key][kind] = value
    bounded_decode(join(header, body))


@SETTINGS
@given(index=st.lists(st.integers(-2**40, 2**40), max_size=12), shape=st.lists(dims, max_size=4),
       index_dtype=st.sampled_from([torch.int32, torch.int64]), fraction=st.sampled_from(["1.0", "0.5", "1e-9"]))
def test_topk_index_parts(index, shape, index_dtype, fraction):
    """Any indices (repeated, unsorted, negative, out of range) against any claimed shape."""
    if index_dtype is torch.int32:
        index = [i % 2**31 for i in index]
    if any(not 0 <= d < 2**63 for d in shape):
        shape = [d % 2**63 for d in shape]
    parts = {"x/index": torch.tensor(index, dtype=index_dtype), "x/value": torch.ones(len(index)),
             "x/shape": torch.tensor(shape, dtype=torch.int64)}
    meta = {"prime.codec": "topk", "prime.format": "1", "prime.param.fraction": fraction}
    blob = b"".join(tensors.encode_parts(parts, metadata=meta))
    try:
        update = codecs.open_update(blob, max_bytes=MAX_BYTES, max_decoded_bytes=MAX_DECODED)
    except DecodeError:
        return
    value = update["x"].reshape(-1)
    assert len(set(index)) == len(index) and index == sorted(index)  # only valid index sets decode
    assert all(0 <= i < value.numel() for i in index) and int((value != 0).sum()) == len(index)
