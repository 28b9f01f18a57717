"""encode_state writes safetensors itself: its bytes must equal safetensors.torch.save's."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save as st_save

from prime.core.tensors import decode_state, encode_parts, encode_state, parts_size

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.float8_e5m2, torch.float8_e4m3fn, torch.int16, torch.uint16,
          torch.float16, torch.bfloat16, torch.int32, torch.uint32, torch.float32, torch.complex64, torch.float64,
          torch.int64, torch.uint64]


def tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def test_every_dtype_matches_safetensors_byte_for_byte():
    state = {f"p.{i}": tensor(d, (3, 2), i) for i, d in enumerate(DTYPES)}
    state.update({"z.scalar": torch.tensor(2.5), "a.empty": torch.zeros(0, 4), "m.big": torch.randn(300, 7)})
    assert encode_state(state) == st_save(state)


@pytest.mark.parametrize("names", [[], ["b", "a", "c"], ["layer.10.w", "layer.2.w", "layer.1.w"], ["ü", "x y"]])
def test_names_and_order_match_safetensors(names):
    state = {n: torch.ones(i + 1) for i, n in enumerate(names)}
    assert encode_state(state) == st_save(state)


def test_header_padding_matches_for_every_name_length():
    for length in range(1, 20):
        state = {"n" * length: torch.ones(3, dtype=torch.float16)}
        assert encode_state(state) == st_save(state)


def test_non_contiguous_and_grad_tensors_round_trip():
    state = {"t": torch.randn(4, 6).t(), "g": torch.ones(3, requires_grad=True)}
    out = decode_state(encode_state(state), max_bytes=1 << 20)
    assert out["t"].equal(state["t"]) and out["g"].equal(state["g"].detach())


def test_a_writable_buffer_decodes_to_views_without_copying():
    state = {"w": torch.randn(64, 32), "b": torch.arange(5, dtype=torch.int64)}
    buf = bytearray(encode_state(state))
    out = decode_state(buf, max_bytes=1 << 20)
    assert all(out[k].equal(state[k]) for k in state)
    buf[-4:] = torch.tensor([7.0]).numpy().tobytes()  # the blob's last 4 bytes: w's last value (I64 sorts first)
    assert out["w"].reshape(-1)[-1].item() == 7.0


def test_encode_parts_are_views_that_join_to_the_blob():
    state = {"w": torch.randn(16, 8), "b": torch.ones(3)}
    parts = encode_parts(state)
    assert b"".join(parts) == st_save(state)
    assert parts_size(parts) == len(st_save(state))
    state["w"][0, 0] = 42.0  # a view, not a copy: it sees the change
    assert b"".join(parts) == st_save(state)
