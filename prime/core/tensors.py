"""Tensor codec: state dicts ↔ bytes, safetensors only (never pickle), optional zlib.

Wire format: the raw safetensors bytes, or ``b"PRZ1"`` + zlib stream when
compression is on. Decoding is size-capped before and during decompression.

Encoding writes the safetensors layout itself (header, then each tensor's bytes) with
one ``bytes.join`` over views of the tensors: one copy of the data, where
``safetensors.torch.save`` makes two. The bytes are identical to what ``save`` writes
(same tensor order, same header, same padding; a unit test holds it to that), and
anything it does not handle (exotic dtypes, odd names) goes through ``save``.
"""

from __future__ import annotations

import hashlib
import json
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


#: safetensors dtype names, ranked as safetensors orders them (it writes higher ranks first).
_ST_DTYPES: dict[torch.dtype, tuple[str, int]] = {
    dtype: (name, rank)
    for rank, (dtype, name) in enumerate([
        (torch.bool, "BOOL"), (torch.uint8, "U8"), (torch.int8, "I8"),
        (torch.float8_e5m2, "F8_E5M2"), (torch.float8_e4m3fn, "F8_E4M3"),
        (torch.int16, "I16"), (torch.uint16, "U16"), (torch.float16, "F16"), (torch.bfloat16, "BF16"),
        (torch.int32, "I32"), (torch.uint32, "U32"), (torch.float32, "F32"), (torch.complex64, "C64"),
        (torch.float64, "F64"), (torch.int64, "I64"), (torch.uint64, "U64"),
    ])
}


def _plain_name(name: str) -> bool:
    """Names whose JSON form is the same from ``json.dumps`` and from safetensors (serde)."""
    return name.isascii() and name.isprintable() and '"' not in name and "\\" not in name


def _safetensors_bytes(clean: StateDict) -> bytes | None:
    """``safetensors.torch.save(clean)``, byte for byte, with one copy; None if out of scope."""
    if not all(v.dtype in _ST_DTYPES and v.layout == torch.strided and _plain_name(k) for k, v in clean.items()):
        return None
    order = sorted(clean, key=lambda k: (-_ST_DTYPES[clean[k].dtype][1], k))
    header: dict[str, dict[str, object]] = {}
    views: list[memoryview] = []
    offset = 0
    for name in order:
        tensor = clean[name]
        data = tensor.reshape(-1).view(torch.uint8).numpy()  # a view, no copy (contiguous CPU tensor)
        header[name] = {"dtype": _ST_DTYPES[tensor.dtype][0], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        views.append(memoryview(data))
        offset += data.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(8 + len(head)) % 8)  # safetensors pads the header to 8-byte alignment
    return b"".join([len(head).to_bytes(8, "little"), head, *views])


def encode_state(state: StateDict, *, compress: bool = False) -> bytes:
    """Serialize tensors (detached, contiguous, CPU) to safetensors bytes."""
    clean = {k: v.detach().to("cpu").contiguous().clone() if v.is_shared() or not v.is_contiguous() else v.detach().to("cpu")
             for k, v in state.items()}
    raw = _safetensors_bytes(clean)
    if raw is None:
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
