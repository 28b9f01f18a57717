"""Tensor codec: bit-exact safetensors round trip, optional zlib, size caps, DecodeError only."""

from __future__ import annotations

import zlib

import pytest
import torch

from prime.core.errors import DecodeError
from prime.core.tensors import decode_state, digest, encode_state

CAP = 1 << 20


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(7, 5, generator=g),
        "b": torch.randn(5, generator=g).to(torch.float64),
        "h": torch.randn(3, 3, generator=g).to(torch.bfloat16),
        "i": torch.arange(10, dtype=torch.int64),
        "special": torch.tensor([float("nan"), float("inf"), -0.0, 1e-45]),
        "t": torch.randn(4, 6, generator=g).t(),  # non-contiguous
        "scalar": torch.tensor(3.5),
    }


def assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].reshape(-1).contiguous().view(torch.uint8).equal(b[k].reshape(-1).contiguous().view(torch.uint8)), k


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_bit_exact(compress):
    state = sample_state()
    blob = encode_state(state, compress=compress)
    assert blob.startswith(b"PRZ1") == compress
    assert_bit_exact(decode_state(blob, max_bytes=CAP), state)


def test_encoding_is_deterministic():
    assert encode_state(sample_state()) == encode_state(sample_state())
    assert digest(encode_state(sample_state())) == digest(encode_state(sample_state()))


def test_compression_shrinks_redundant_data():
    state = {"z": torch.zeros(10_000)}
    assert len(encode_state(state, compress=True)) < len(encode_state(state)) // 10


def test_encode_does_not_mutate_or_alias_input():
    state = {"w": torch.ones(3, requires_grad=True)}
    out = decode_state(encode_state(state), max_bytes=CAP)
    out["w"].add_(1)
    assert state["w"].detach().equal(torch.ones(3))


def test_digest_is_sha256_hex():
    assert digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest(memoryview(b"abc")) == digest(b"abc")


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage", b"\x00" * 8, b"\xff" * 8 + b"{}", b"PRZ1", b"PRZ1not zlib at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"],
)
def test_garbage_raises_decode_error(blob):
    with pytest.raises(DecodeError):
        decode_state(blob, max_bytes=CAP)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_blob_raises_decode_error(compress):
    blob = encode_state(sample_state(), compress=compress)
    for cut in (len(blob) - 17, len(blob) // 2, 12, 9, 5, 4, 1):
        with pytest.raises(DecodeError):
            decode_state(blob[:cut], max_bytes=CAP)


def test_raw_blob_missing_last_byte():
    blob = encode_state(sample_state())
    with pytest.raises(DecodeError):
        decode_state(blob[:-1], max_bytes=CAP)


@pytest.mark.parametrize("cut", [1, 4])
def test_compressed_blob_missing_its_tail_is_truncated(cut):
    """Dropping the zlib trailer (adler32) must not go unnoticed: the stream never reached its end."""
    blob = encode_state(sample_state(), compress=True)
    with pytest.raises(DecodeError):
        decode_state(blob[:-cut], max_bytes=CAP)


def test_header_claiming_more_data_than_present():
    blob = bytearray(encode_state({"w": torch.zeros(4)}))
    header_len = int.from_bytes(blob[:8], "little")
    header = bytes(blob[8 : 8 + header_len]).replace(b"[0,16]", b"[0,99]")
    assert header != bytes(blob[8 : 8 + header_len])
    with pytest.raises(DecodeError):
        decode_state(bytes(blob[:8]) + header + bytes(blob[8 + header_len :]), max_bytes=CAP)


def test_size_cap_on_raw_blob():
    blob = encode_state({"w": torch.zeros(1000)})
    with pytest.raises(DecodeError, match="exceeds cap"):
        decode_state(blob, max_bytes=len(blob) - 1)
    assert decode_state(blob, max_bytes=len(blob))["w"].shape == (1000,)


def test_size_cap_on_decompressed_blob():
    blob = encode_state({"w": torch.zeros(10_000)}, compress=True)
    raw_len = len(encode_state({"w": torch.zeros(10_000)}))
    assert len(blob) < 1000
    with pytest.raises(DecodeError, match="decompressed"):
        decode_state(blob, max_bytes=raw_len - 1)
    assert decode_state(blob, max_bytes=raw_len)["w"].shape == (10_000,)


def test_zlib_bomb_refused_without_inflating():
    """64 MiB of zeros compresses to ~64 KiB; with a 1 MiB cap it is refused after inflating ~1 MiB."""
    import tracemalloc

    bomb = b"PRZ1" + zlib.compress(bytes(64 << 20), 9)
    assert len(bomb) < CAP
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="exceeds cap"):
            decode_state(bomb, max_bytes=CAP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * CAP, f"inflated {peak} bytes to refuse a bomb"


def test_bomb_that_inflates_exactly_one_byte_past_cap():
    raw = encode_state({"w": torch.zeros(1000)})
    blob = b"PRZ1" + zlib.compress(raw + b"\x00")
    with pytest.raises(DecodeError):
        decode_state(blob, max_bytes=len(raw))
