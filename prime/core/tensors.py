"""Tensor codec: state dicts ↔ bytes, safetensors only (never pickle), optional zlib.

Wire format: the raw safetensors bytes, or ``b"PRZ1"`` + zlib stream when
compression is on. Decoding is size-capped before and during decompression.
"""

from __future__ import annotations

import hashlib
import zlib

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prime.core.errors import DecodeError

_ZLIB_MAGIC = b"PRZ1"
StateDict = dict[str, torch.Tensor]


def digest(data: bytes | memoryview) -> str:
    """Content address of a blob: SHA-256 hex."""
    return hashlib.sha256(data).hexdigest()


def encode_state(state: StateDict, *, compress: bool = False) -> bytes:
    """Serialize tensors (detached, contiguous, CPU) to safetensors bytes."""
    clean = {k: v.detach().to("cpu").contiguous().clone() if v.is_shared() or not v.is_contiguous() else v.detach().to("cpu")
             for k, v in state.items()}
    raw = st_save(clean)
    if compress:
        return _ZLIB_MAGIC + zlib.compress(raw, 1)
    return raw


def decode_state(data: bytes, *, max_bytes: int) -> StateDict:
    """Parse bytes from :func:`encode_state`; raise ``DecodeError`` on anything else."""
    if len(data) > max_bytes:
        raise DecodeError(f"tensor blob of {len(data)} bytes exceeds cap {max_bytes}")
    if data[:4] == _ZLIB_MAGIC:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(data[4:], max_bytes + 1)
        except zlib.error as exc:
            raise DecodeError(f"corrupt compressed tensor blob: {exc}") from None
        if len(raw) > max_bytes or inflater.unconsumed_tail:
            raise DecodeError(f"decompressed tensor blob exceeds cap {max_bytes}")
        if not inflater.eof:
            raise DecodeError("compressed tensor blob is truncated")
        data = raw
    try:
        return st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise DecodeError(f"not a safetensors blob: {exc}") from None
    except Exception as exc:  # safetensors raises a few bare types on garbage
        raise DecodeError(f"not a safetensors blob: {type(exc).__name__}: {exc}") from None
