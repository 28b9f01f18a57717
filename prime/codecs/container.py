"""The encoded-blob format, and decoding it a tensor at a time.

An encoded blob is a safetensors container (``prime/core/tensors.py``; zlib-wrapped when
``network.enable_compression`` is on). Its ``__metadata__`` names the codec
(``prime.codec``), the format version (``prime.format``) and each of the codec's parameters
(``prime.param.NAME``); a model tensor NAME is stored as the tensors ``NAME/PART`` (the codec's
parts), or as ``NAME/raw`` when it is not float32. ``fp32`` writes plain safetensors with no
metadata: the bytes prime always sent.

Decoding checks everything first: the blob within ``max_bytes``, a known codec and version,
parameters in range, for every tensor exactly its codec's parts with the dtypes and shapes it
writes (top-k indices in range and strictly increasing), and the total decoded size within
``max_decoded_bytes``; only then is anything allocated. :class:`EncodedUpdate` is the checked
blob as a read-only mapping that decodes a tensor each time one is read, so an aggregator can
fold an update tensor by tensor without ever holding all of it in float32.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping

import torch

from prime.codecs.base import Codec, Parts
from prime.codecs.registry import CODECS
from prime.core import tensors
from prime.core.errors import DecodeError
from prime.core.tensors import Buffer, StateDict

FORMAT_VERSION = "1"
_CODEC, _FORMAT, _PARAM = "prime.codec", "prime.format", "prime.param."
_NUMBER = re.compile(r"-?[0-9][0-9.e+-]{0,31}")


class CodecMismatch(DecodeError):
    """A well-formed blob in another codec, or with other parameters, than the one expected."""


def is_coded(tensor: torch.Tensor) -> bool:
    """Whether a codec compresses this tensor (float32); any other rides raw."""
    return tensor.dtype == torch.float32


def encode_tensor(codec: Codec, tensor: torch.Tensor) -> Parts:
    """One tensor's parts: the codec's if it is float32, else ``raw``."""
    tensor = tensor.detach().to("cpu")
    return codec.encode_tensor(tensor.contiguous()) if is_coded(tensor) else {"raw": tensor}


def header(codec: Codec) -> dict[str, str]:
    """The metadata that names ``codec`` and its parameters in a blob."""
    return {_CODEC: codec.name, _FORMAT: FORMAT_VERSION, **{_PARAM + k: repr(v) for k, v in codec.params().items()}}


def pack(codec: Codec, encoded: dict[str, Parts], *, compress: bool = False) -> list[Buffer]:
    """The blob (as pieces, for hashing and writing without a join) of already encoded tensors."""
    if codec.plain:
        return tensors.encode_parts({name: parts["value"] if "value" in parts else parts["raw"]
                                     for name, parts in encoded.items()}, compress=compress)
    flat = {f"{name}/{key}": value for name, parts in encoded.items() for key, value in parts.items()}
    return tensors.encode_parts(flat, compress=compress, metadata=header(codec))


def encode(codec: Codec, state: StateDict, *, compress: bool = False) -> list[Buffer]:
    """``state`` as a blob in ``codec`` (pieces; ``b"".join`` them for bytes)."""
    if codec.plain:
        return tensors.encode_parts(state, compress=compress)
    return pack(codec, {name: encode_tensor(codec, t) for name, t in state.items()}, compress=compress)


def roundtrip(codec: Codec, state: StateDict) -> StateDict:
    """What a receiver decodes from ``encode(codec, state)``, without the bytes (same operations)."""
    if codec.lossless:
        return dict(state)
    out = {}
    for name, tensor in state.items():
        parts = encode_tensor(codec, tensor)
        out[name] = parts["raw"] if "raw" in parts else codec.decode_tensor(parts, tuple(tensor.shape))
    return out


def _codec_of(metadata: dict[str, str]) -> Codec:
    ours = {k: v for k, v in metadata.items() if k.startswith("prime.")}
    if not ours:
        return CODECS["fp32"]()
    name = ours.pop(_CODEC, None)
    cls = CODECS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise DecodeError(f"blob names an unknown codec {name!r} (known: {', '.join(CODECS)})")
    version = ours.pop(_FORMAT, None)
    if version != FORMAT_VERSION:
        raise DecodeError(f"{name} blob of format {version!r}; this prime reads format {FORMAT_VERSION}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {k[len(_PARAM):]: v for k, v in ours.items() if k.startswith(_PARAM)}
    if len(given) != len(ours) or set(given) != set(fields):
        raise DecodeError(f"{name} blob's parameters are {sorted(ours)}, expected {sorted(fields)}")
    params: dict[str, int | float] = {}
    for key, text in given.items():
        kind = fields[key].type
        if not _NUMBER.fullmatch(text):
            raise DecodeError(f"{name} parameter {key} = {text!r} is not a number")
        try:
            params[key] = int(text) if kind in (int, "int") else float(text)
        except ValueError:
            raise DecodeError(f"{name} parameter {key} = {text!r} is not a number") from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{name} blob: {exc}") from None


def _group(stored: StateDict, codec: Codec) -> dict[str, Parts]:
    if codec.plain:
        return {name: {"raw": t} for name, t in sorted(stored.items())}
    groups: dict[str, Parts] = {}
    for key, value in stored.items():
        name, sep, piece = key.rpartition("/")
        if not sep or not name:
            raise DecodeError(f"{codec.name} blob holds {key!r}, not NAME/PART")
        groups.setdefault(name, {})[piece] = value
    return dict(sorted(groups.items()))


def open_update(data: Buffer, *, max_bytes: int, max_decoded_bytes: int | None = None,
                expect: Codec | None = None) -> "EncodedUpdate":
    """The checked blob, decoded lazily. ``max_bytes`` bounds the blob (and its zlib expansion),
    ``max_decoded_bytes`` (default: ``max_bytes``) what all its tensors decode to; ``expect``
    raises :class:`CodecMismatch` for a blob in another codec or with other parameters."""
    cap = max_bytes if max_decoded_bytes is None else max_decoded_bytes
    metadata, stored = tensors.decode_container(data, max_bytes=max_bytes)
    codec = _codec_of(metadata)
    if expect is not None and codec != expect:
        raise CodecMismatch(f"the blob is encoded {codec.describe()}, the job's codec is {expect.describe()}")
    entries = _group(stored, codec)
    shapes: dict[str, torch.Size] = {}
    total = 0
    for name, parts in entries.items():
        try:
            if set(parts) == {"raw"}:
                raw = parts["raw"]
                if not codec.plain and is_coded(raw):
                    raise DecodeError("a float32 tensor must be encoded, not raw")
                shape, nbytes = tuple(raw.shape), raw.numel() * raw.element_size()
            elif set(parts) == codec.parts:
                shape = codec.check(parts)
                nbytes = math.prod(shape) * 4
            else:
                raise DecodeError(f"parts {sorted(parts)}; a {codec.name} tensor has {sorted(codec.parts)} or raw")
        except DecodeError as exc:
            raise DecodeError(f"{codec.name} blob, tensor {name!r}: {exc}") from None
        shapes[name] = torch.Size(shape)
        total += nbytes
        if total > cap:
            raise DecodeError(f"{codec.name} blob decodes to more than the cap of {cap} bytes")
    return EncodedUpdate(codec, entries, shapes, total)


def decode(data: Buffer, *, max_bytes: int, max_decoded_bytes: int | None = None,
           expect: Codec | None = None) -> StateDict:
    """Every tensor of the blob, decoded (``open_update``'s checks and bounds)."""
    return open_update(data, max_bytes=max_bytes, max_decoded_bytes=max_decoded_bytes, expect=expect).decoded()


class EncodedUpdate(Mapping[str, torch.Tensor]):
    """A checked encoded blob as a read-only state dict: each read of ``update[name]`` decodes
    that tensor afresh (float32; a raw or fp32 one is a view of the blob), so iterating over it
    never holds more than one decoded tensor. Names and shapes are known without decoding."""

    def __init__(self, codec: Codec, entries: dict[str, Parts], shapes: dict[str, torch.Size], nbytes: int) -> None:
        self.codec = codec
        self._entries = entries
        self.shapes = shapes
        self.nbytes = nbytes  # what all of it decodes to

    def __getitem__(self, name: str) -> torch.Tensor:
        parts = self._entries[name]
        raw = parts.get("raw")
        return raw if raw is not None else self.codec.decode_tensor(parts, tuple(self.shapes[name]))

    def __contains__(self, name: object) -> bool:  # without decoding
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    __eq__ = object.__eq__  # Mapping's would decode everything to compare
    __hash__ = object.__hash__

    def decoded(self) -> StateDict:
        """Every tensor decoded at once (a plain dict)."""
        return {name: self[name] for name in self._entries}
