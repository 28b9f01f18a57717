"""Tensor codec: state dicts ↔ bytes, safetensors only (never pickle), optional zlib.

Wire format: the raw safetensors bytes, or ``b"PRZ1"`` + zlib stream when
compression is on. Decoding is size-capped before and during decompression.

Encoding writes the safetensors layout itself (header, then each tensor's bytes):
:func:`encode_parts` returns the header and views of the tensors, no copy at all, for
callers that hash and write them piece by piece; :func:`encode_state` joins them (one
copy, where ``safetensors.torch.save`` makes two). The bytes are identical to what
``save`` writes (same tensor order, same header, same padding; a unit test holds it to
that), and anything it does not handle (exotic dtypes, odd names) goes through ``save``.

Decoding a writable buffer (a received blob's private mapping) is zero-copy: the header
is checked as strictly as safetensors checks it, then each tensor is a view of the
buffer. Read-only buffers (``bytes``) are copied out by safetensors.
:func:`decode_container` also returns the header's ``__metadata__`` (where ``prime/codecs``
names a blob's codec).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Sequence

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


_DTYPES_BY_NAME: dict[str, torch.dtype] = {name: dtype for dtype, (name, _) in _ST_DTYPES.items()}
#: safetensors' own bound on the JSON header.
_MAX_HEADER_BYTES = 100_000_000
Buffer = bytes | bytearray | memoryview


def _safetensors_parts(clean: StateDict, metadata: dict[str, str] | None = None) -> list[Buffer] | None:
    """``safetensors.torch.save(clean, metadata)`` as header + tensor views (no copy); None if out of scope."""
    if not all(v.dtype in _ST_DTYPES and v.layout == torch.strided and _plain_name(k) for k, v in clean.items()):
        return None
    if metadata and not all(_plain_name(k) and _plain_name(v) for k, v in metadata.items()):
        return None
    order = sorted(clean, key=lambda k: (-_ST_DTYPES[clean[k].dtype][1], k))
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
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
    return [len(head).to_bytes(8, "little") + head, *views]


def encode_parts(state: StateDict, *, compress: bool = False, metadata: dict[str, str] | None = None) -> list[Buffer]:
    """:func:`encode_state`'s bytes as a list of pieces, views of the tensors where possible.

    The views stay valid while ``state``'s tensors are alive and unchanged. ``metadata`` goes
    into the header's ``__metadata__`` (the codecs name themselves there: ``prime/codecs``).
    """
    clean = {k: v.detach().to("cpu").contiguous().clone() if v.is_shared() or not v.is_contiguous() else v.detach().to("cpu")
             for k, v in state.items()}
    parts = _safetensors_parts(clean, metadata)
    if parts is None:
        parts = [st_save(clean, metadata=metadata)]
    if compress:
        return [_ZLIB_MAGIC + zlib.compress(b"".join(parts), 1)]
    return parts


def encode_state(state: StateDict, *, compress: bool = False) -> bytes:
    """Serialize tensors (detached, contiguous, CPU) to safetensors bytes."""
    parts = encode_parts(state, compress=compress)
    return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


def parts_size(parts: Sequence[Buffer]) -> int:
    return sum(memoryview(p).nbytes for p in parts)


def _inflated(data: Buffer, max_bytes: int) -> Buffer:
    """``data`` within ``max_bytes``, unwrapped if zlib-compressed (decompressed within the cap too)."""
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
        return raw
    return data


def decode_state(data: bytes, *, max_bytes: int) -> StateDict:
    """Parse bytes from :func:`encode_state`; raise ``DecodeError`` on anything else."""
    data = _inflated(data, max_bytes)
    view = memoryview(data)
    if not view.readonly and view.contiguous and view.format in ("B", "b", "c"):
        return _view_tensors(view.cast("B"))
    try:
        return st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise DecodeError(f"not a safetensors blob: {exc}") from None
    except Exception as exc:  # safetensors raises a few bare types on garbage
        raise DecodeError(f"not a safetensors blob: {type(exc).__name__}: {exc}") from None


def decode_container(data: Buffer, *, max_bytes: int) -> tuple[dict[str, str], StateDict]:
    """``(metadata, tensors)`` of a blob from :func:`encode_parts` (zlib-wrapped or not), checked as
    :func:`decode_state` checks it; the tensors are views of the bytes (a read-only buffer is
    copied once first). Nothing is allocated beyond ``max_bytes`` (plus the parsed header)."""
    data = _inflated(data, max_bytes)
    view = memoryview(data)
    if view.readonly or not view.contiguous or view.format not in ("B", "b", "c"):
        view = memoryview(bytearray(view))
    return _view_container(view.cast("B"))


def _view_tensors(buf: memoryview) -> StateDict:
    return _view_container(buf)[1]


#: Bound on a decoded shape's dimensions and their product (torch computes int64 sizes and strides,
#: and an empty tensor's shape may claim anything).
_MAX_DIM = 1 << 62


def valid_shape(shape: object) -> bool:
    """A list of at most 64 non-negative ints whose strides fit in int64 (empty tensors included)."""
    return (isinstance(shape, (list, tuple)) and len(shape) <= 64 and all(type(d) is int and d >= 0 for d in shape)
            and math.prod(max(d, 1) for d in shape) < _MAX_DIM)


def _view_container(buf: memoryview) -> tuple[dict[str, str], StateDict]:
    """Metadata, and tensors that are views of ``buf`` (safetensors layout), after checking the
    header as strictly as safetensors does: known dtypes, sizes that match shapes, offsets that
    tile the data exactly, nothing outside the buffer."""
    if len(buf) < 8:
        raise DecodeError("not a safetensors blob: shorter than its length prefix")
    head_len = int.from_bytes(buf[:8], "little")
    if head_len > min(_MAX_HEADER_BYTES, len(buf) - 8):
        raise DecodeError(f"not a safetensors blob: header length {head_len} is out of bounds")
    try:
        header = json.loads(bytes(buf[8:8 + head_len]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"not a safetensors blob: header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError("not a safetensors blob: header is not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DecodeError("not a safetensors blob: __metadata__ must map strings to strings")
    start = 8 + head_len
    body = len(buf) - start
    spans: list[tuple[int, int, str, torch.dtype, list[int]]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise DecodeError(f"not a safetensors blob: bad entry for {name!r}")
        dtype, shape, offsets = _DTYPES_BY_NAME.get(entry["dtype"]), entry["shape"], entry["data_offsets"]
        if dtype is None:
            raise DecodeError(f"not a safetensors blob: unknown dtype {entry['dtype']!r} for {name!r}")
        if not isinstance(shape, list) or not valid_shape(shape):
            raise DecodeError(f"not a safetensors blob: bad shape for {name!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= body):
            raise DecodeError(f"not a safetensors blob: bad data offsets for {name!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
            raise DecodeError(f"not a safetensors blob: {name!r} has {offsets[1] - offsets[0]} bytes for shape {shape}")
        spans.append((offsets[0], offsets[1], name, dtype, shape))
    spans.sort()
    covered = 0
    for begin, end, name, _, _ in spans:
        if begin != covered:
            raise DecodeError(f"not a safetensors blob: data of {name!r} does not follow the previous tensor's")
        covered = end
    if covered != body:
        raise DecodeError(f"not a safetensors blob: tensors cover {covered} of {body} data bytes")
    state: StateDict = {}
    for begin, end, name, dtype, shape in spans:
        offset = start + begin
        if end == begin:
            state[name] = torch.empty(shape, dtype=dtype)
        elif offset % dtype.itemsize:  # misaligned for its dtype: copy it out instead of viewing
            raw = torch.frombuffer(bytearray(buf[offset:start + end]), dtype=torch.uint8)
            state[name] = raw.view(dtype).reshape(shape)
        else:
            state[name] = torch.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    return metadata, state
