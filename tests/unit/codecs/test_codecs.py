"""Each codec's round trip within its error bound; the blob format; the bounded, lazy decoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prime import codecs
from prime.codecs import container
from prime.core import tensors
from prime.core.errors import DecodeError

CAP = 1 << 26


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.w": torch.randn(64, 33, generator=g) * 0.01,
        "layer.b": torch.randn(7, generator=g),
        "outlier": torch.cat([torch.randn(500, generator=g) * 1e-3, torch.tensor([50.0])]),
        "zeros": torch.zeros(300),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "steps": torch.tensor([7, 9], dtype=torch.int64),  # not float32: rides raw
        "double": torch.randn(5, generator=g, dtype=torch.float64),
    }


def blob(codec, s, **kw) -> bytes:
    return b"".join(codecs.encode(codec, s, **kw))


def decoded(codec, s, **kw) -> dict[str, torch.Tensor]:
    return codecs.decode(blob(codec, s, **kw), max_bytes=CAP, expect=codec)


ALL = [codecs.FP32(), codecs.FP16(), codecs.BF16(), codecs.Int8(), codecs.Int8(block_size=7), codecs.UInt8(),
       codecs.TopK(), codecs.TopK(fraction=0.25)]


@pytest.mark.parametrize("codec", ALL, ids=lambda c: c.describe())
def test_names_shapes_dtypes_survive_and_non_float32_is_exact(codec):
    s = state()
    out = decoded(codec, s)
    assert list(out) == sorted(s)
    for name, value in s.items():
        assert out[name].shape == value.shape and out[name].dtype == value.dtype
    assert torch.equal(out["steps"], s["steps"]) and torch.equal(out["double"], s["double"])
    assert torch.equal(out["zeros"], s["zeros"])


@pytest.mark.parametrize("codec", ALL, ids=lambda c: c.describe())
def test_roundtrip_without_bytes_is_bitwise_what_a_receiver_decodes(codec):
    s = state(1)
    ours, theirs = codecs.roundtrip(codec, s), decoded(codec, s)
    assert all(torch.equal(ours[k], theirs[k]) for k in s)


def test_fp32_is_the_old_bytes_exactly():
    s = state()
    assert blob(codecs.FP32(), s) == tensors.encode_state(s)
    assert blob(codecs.FP32(), s, compress=True) == tensors.encode_state(s, compress=True)
    out = decoded(codecs.FP32(), s)
    assert all(torch.equal(out[k], s[k]) for k in s)


def test_half_precision_relative_error():
    x = torch.cat([torch.logspace(-4, 4, 2000), -torch.logspace(-4, 4, 2000)])
    for codec, bound in ((codecs.FP16(), 2.0**-11), (codecs.BF16(), 2.0**-8)):
        y = decoded(codec, {"x": x})["x"]
        assert float(((y - x).abs() / x.abs()).max()) <= bound
    tiny = torch.tensor([1e-7, -3e-6, 2e-5])  # fp16 subnormals: absolute error at most 2^-25
    assert float((decoded(codecs.FP16(), {"x": tiny})["x"] - tiny).abs().max()) <= 2.0**-25


@pytest.mark.parametrize("block", [1, 7, 64, 256, 5000])
def test_int8_error_is_within_absmax_over_127_per_block(block):
    x = torch.randn(4099, generator=torch.Generator().manual_seed(block))
    x[100] = 40.0  # an outlier costs precision in its own block only
    y = decoded(codecs.Int8(block_size=block), {"x": x})["x"]
    for start in range(0, x.numel(), block):
        a, b = x[start:start + block], y[start:start + block]
        absmax = float(a.abs().max())
        assert float((a - b).abs().max()) <= absmax / 127 * (1 + 1e-6)
        assert float((a - b).abs().max()) <= absmax / 254 * (1 + 1e-5) + 1e-12  # round to nearest: half a step


def test_int8_size_is_about_a_byte_a_value():
    n = 1 << 16
    assert len(blob(codecs.Int8(block_size=256), {"x": torch.randn(n)})) < n * (1 + 4 / 256) + 400


def test_uint8_error_is_within_half_a_step():
    x = torch.randn(3001) * 5 + 2
    y = decoded(codecs.UInt8(), {"x": x})["x"]
    step = float(x.max() - x.min()) / 255
    assert float((x - y).abs().max()) <= step / 2 * (1 + 1e-4)
    constant = torch.full((9,), -2.5)
    assert torch.equal(decoded(codecs.UInt8(), {"c": constant})["c"], constant)


def test_topk_keeps_the_largest_exactly_and_zeroes_the_rest():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    codec = codecs.TopK(fraction=0.01)
    y = decoded(codec, {"x": x.view(100, 100)})["x"].reshape(-1)
    kept = y != 0
    assert int(kept.sum()) == codec.kept(x.numel()) == 100
    assert torch.equal(y[kept], x[kept])
    assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
    assert codec.kept(1) == 1 and codec.kept(0) == 0 and codecs.TopK(fraction=1.0).kept(17) == 17


def test_error_feedback_conserves_what_was_not_sent():
    codec = codecs.TopK(fraction=0.05)
    feedback = codecs.ErrorFeedback(codec)
    g = torch.Generator().manual_seed(4)
    old = {"w": torch.zeros(40, 25), "steps": None}
    for _ in range(3):
        delta = {"w": torch.randn(40, 25, generator=g), "steps": torch.tensor([1])}
        before = feedback.residual.get("w", torch.zeros(40, 25))
        parts, residual = feedback.encode(delta)
        sent = codecs.decode(b"".join(parts), max_bytes=CAP, expect=codec)
        assert torch.equal(sent["w"] + residual["w"], delta["w"] + before)  # sent + residual == delta + old residual
        assert torch.equal(sent["steps"], delta["steps"]) and "steps" not in residual
        feedback.adopt(residual)
        old = residual
    assert feedback.norm() > 0 and old["w"].shape == (40, 25)


def test_error_feedback_residual_survives_a_checkpoint(tmp_path):
    from prime.trainer.checkpoint import CheckpointStore

    feedback = codecs.ErrorFeedback(codecs.TopK(fraction=0.1))
    _, residual = feedback.encode({"w": torch.randn(8, 8), "b": torch.randn(8)})
    feedback.adopt(residual)
    store = CheckpointStore(tmp_path)
    store.save("round-000001", {"codec_residual": feedback.residual})
    restored = codecs.ErrorFeedback(codecs.TopK(fraction=0.1))
    assert restored.load(store.load("round-000001")["codec_residual"], {"w": (8, 8), "b": (8,)}) == 2
    assert all(torch.equal(restored.residual[k], residual[k]) for k in residual)
    assert restored.load(residual, {"w": (8, 8), "b": (9,)}) == 1  # what no longer fits the model is dropped


def test_lossy_codecs_keep_non_finite_values_non_finite():
    x = torch.randn(1000)
    x[10], x[600] = math.nan, math.inf
    for codec in (codecs.FP16(), codecs.BF16(), codecs.Int8(block_size=100), codecs.UInt8(), codecs.TopK(fraction=0.5)):
        y = decoded(codec, {"x": x})["x"]
        assert not bool(torch.isfinite(y).all()), codec


def test_zlib_wraps_any_codec():
    s = state()
    for codec in ALL:
        packed = blob(codec, s, compress=True)
        assert packed[:4] == b"PRZ1"
        out = codecs.decode(packed, max_bytes=CAP, expect=codec)
        ref = decoded(codec, s)
        assert all(torch.equal(out[k], ref[k]) for k in s)


def test_encoded_update_decodes_a_tensor_each_time_it_is_read():
    update = codecs.open_update(blob(codecs.Int8(), state()), max_bytes=CAP)
    assert isinstance(update.codec, codecs.Int8) and "layer.w" in update and "nope" not in update
    assert update.shapes["layer.w"] == (64, 33) and len(update) == len(state())
    first, second = update["layer.w"], update["layer.w"]
    assert torch.equal(first, second) and first.data_ptr() != second.data_ptr()  # fresh each read
    assert update.nbytes == sum(t.numel() * t.element_size() for t in state().values())


def test_expected_codec_and_parameters_are_enforced():
    data = blob(codecs.Int8(block_size=64), state())
    assert codecs.decode(data, max_bytes=CAP, expect=codecs.Int8(block_size=64))
    with pytest.raises(codecs.CodecMismatch, match="block_size=64"):
        codecs.open_update(data, max_bytes=CAP, expect=codecs.Int8())
    with pytest.raises(codecs.CodecMismatch):
        codecs.open_update(data, max_bytes=CAP, expect=codecs.FP32())
    with pytest.raises(codecs.CodecMismatch):
        codecs.open_update(blob(codecs.FP32(), state()), max_bytes=CAP, expect=codecs.BF16())


def test_decoded_size_is_bounded_before_allocating():
    data = blob(codecs.Int8(), {"x": torch.randn(1000)})
    assert codecs.open_update(data, max_bytes=CAP, max_decoded_bytes=4000)
    with pytest.raises(DecodeError, match="cap of 3999"):
        codecs.open_update(data, max_bytes=CAP, max_decoded_bytes=3999)
    with pytest.raises(DecodeError, match="exceeds cap"):
        codecs.open_update(data, max_bytes=len(data) - 1)


# -- hand-made hostile blobs ---------------------------------------------------------------

def forged(codec, parts: dict[str, torch.Tensor], **meta: str) -> bytes:
    header = {**container.header(codec), **meta}
    return b"".join(tensors.encode_parts(parts, metadata={k: v for k, v in header.items() if v is not None}))


def topk_parts(index, values, shape) -> dict[str, torch.Tensor]:
    return {"x/index": torch.tensor(index, dtype=torch.int32), "x/value": torch.tensor(values, dtype=torch.float32),
            "x/shape": torch.tensor(shape, dtype=torch.int64)}


@pytest.mark.parametrize("index, shape, match", [
    ([0, 5, 10], [10], "outside"),
    ([-1, 2, 3], [10], "outside"),
    ([2, 2, 3], [10], "repeat"),
    ([3, 2, 1], [10], "outside|repeat"),
    ([1, 2, 3, 4], [10], "allows 1"),  # fraction 0.1 of 10 values: 1 entry
])
def test_topk_with_bad_indices_is_refused(index, shape, match):
    codec = codecs.TopK(fraction=0.1 if len(index) == 4 else 0.3)
    with pytest.raises(DecodeError, match=match):
        codecs.open_update(forged(codec, topk_parts(index, [1.0] * len(index), shape)), max_bytes=CAP)


def test_a_header_lying_about_sizes_is_refused_without_allocating():
    # a 2^60-value tensor claimed by a 20-byte blob: refused by the decoded-size cap, nothing allocated
    lying = forged(codecs.TopK(fraction=1.0), topk_parts([0], [1.0], [2**30, 2**30]))
    with pytest.raises(DecodeError, match="cap"):
        codecs.open_update(lying, max_bytes=CAP)
    with pytest.raises(DecodeError, match="out of range"):
        codecs.open_update(forged(codecs.TopK(fraction=1.0), topk_parts([0], [1.0], [2**62 + 1])), max_bytes=CAP)
    scales = {"x/q": torch.zeros(1000, dtype=torch.int8), "x/scale": torch.ones(3)}
    with pytest.raises(DecodeError, match="3 scales for 1000 values"):
        codecs.open_update(forged(codecs.Int8(), scales), max_bytes=CAP)


@pytest.mark.parametrize("meta, match", [
    ({"prime.codec": "int4"}, "unknown codec"),
    ({"prime.format": "2"}, "format"),
    ({"prime.param.block_size": "0"}, "block_size"),
    ({"prime.param.block_size": "abc"}, "not a number"),
    ({"prime.param.block_size": None, "prime.param.bits": "4"}, "parameters"),
])
def test_bad_headers_are_refused(meta, match):
    parts = {"x/q": torch.zeros(4, dtype=torch.int8), "x/scale": torch.ones(1)}
    with pytest.raises(DecodeError, match=match):
        codecs.open_update(forged(codecs.Int8(), parts, **meta), max_bytes=CAP)


def test_wrong_parts_and_raw_float32_are_refused():
    with pytest.raises(DecodeError, match="parts"):
        codecs.open_update(forged(codecs.Int8(), {"x/q": torch.zeros(4, dtype=torch.int8)}), max_bytes=CAP)
    with pytest.raises(DecodeError, match="must be encoded"):
        codecs.open_update(forged(codecs.Int8(), {"x/raw": torch.zeros(4)}), max_bytes=CAP)
    with pytest.raises(DecodeError, match="NAME/PART"):
        codecs.open_update(forged(codecs.Int8(), {"x": torch.zeros(4, dtype=torch.int8)}), max_bytes=CAP)
    with pytest.raises(DecodeError, match="expected torch.int8"):
        codecs.open_update(forged(codecs.Int8(), {"x/q": torch.zeros(4, dtype=torch.uint8), "x/scale": torch.ones(1)}),
                           max_bytes=CAP)


def test_the_header_names_codec_format_and_parameters():
    data = blob(codecs.Int8(block_size=32), {"x": torch.randn(64)})
    head = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert head["__metadata__"] == {"prime.codec": "int8", "prime.format": "1", "prime.param.block_size": "32"}
    assert set(head) == {"__metadata__", "x/q", "x/scale"}


def test_registry_builds_from_names_and_config():
    from prime.core.config import parse_config

    config = parse_config({"compression": {"update": {"name": "topk", "fraction": 0.05}, "model": "bf16"}}).compression
    assert codecs.from_config(config.update) == codecs.TopK(fraction=0.05)
    assert codecs.from_config(config.model) == codecs.BF16()
    assert set(codecs.CODECS) == {"fp32", "fp16", "bf16", "int8", "uint8", "topk"}
    with pytest.raises(ValueError, match="unknown codec"):
        codecs.build("int4")
    with pytest.raises(ValueError, match="block_size"):
        codecs.build("int8", block_size=0)


def test_an_empty_tensor_whose_strides_overflow_is_a_decode_error():
    head = json.dumps({"x": {"dtype": "F32", "shape": [0, 2**40, 2**40], "data_offsets": [0, 0]}}).encode()
    with pytest.raises(DecodeError, match="bad shape"):
        tensors.decode_state(bytearray(len(head).to_bytes(8, "little") + head), max_bytes=1000)
