"""``topk``: only the largest ``fraction`` of each tensor's entries by magnitude, as
(index, value) pairs; with error feedback (``feedback.py``) what is left out is sent later.

A tensor of n values sends k = max(1, round(fraction · n)) of them (at most n): int32 indices
(int64 past 2³¹ values), strictly increasing, and their float32 values, so with fraction 0.01
an update is ~0.8% of its fp32 size. A blob with more entries than its fraction allows, an
index out of range, or indices that repeat or are not increasing is refused before anything
is allocated. Kept entries decode exactly; the rest are zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from prime.codecs.base import Codec, Parts, part
from prime.core.tensors import valid_shape
from prime.core.errors import DecodeError

_MAX_DIMS = 64  # as safetensors shapes (``tensors.valid_shape``)


@dataclasses.dataclass(frozen=True)
class TopK(Codec):
    name: ClassVar[str] = "topk"
    parts: ClassVar[frozenset[str]] = frozenset({"index", "value", "shape"})
    error_feedback: ClassVar[bool] = True
    fraction: float = 0.01

    def validate(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"topk fraction must be a number in (0, 1], got {self.fraction!r}")
        object.__setattr__(self, "fraction", float(self.fraction))

    def kept(self, n: int) -> int:
        """Entries sent of a tensor of ``n`` values."""
        return min(n, max(1, round(self.fraction * n))) if n else 0

    def encode_tensor(self, tensor: torch.Tensor) -> Parts:
        flat = tensor.reshape(-1)
        n = flat.numel()
        k = self.kept(n)
        if k == n:
            index = torch.arange(n)
        else:
            index = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        return {"index": index.to(torch.int32 if n <= 2**31 - 1 else torch.int64), "value": flat[index],
                "shape": torch.tensor(list(tensor.shape), dtype=torch.int64)}

    def check(self, parts: Parts) -> tuple[int, ...]:
        dims = part(parts, "shape", (torch.int64,), ndim=1)
        if dims.numel() > _MAX_DIMS:
            raise DecodeError(f"part 'shape' has {dims.numel()} dimensions, at most {_MAX_DIMS}")
        shape = tuple(int(d) for d in dims.tolist())
        if not valid_shape(shape):
            raise DecodeError(f"part 'shape' {list(shape)} has a dimension out of range")
        n = math.prod(shape)
        index = part(parts, "index", (torch.int32, torch.int64), ndim=1)
        value = part(parts, "value", (torch.float32,), ndim=1)
        k = index.numel()
        if value.numel() != k:
            raise DecodeError(f"{k} indices for {value.numel()} values")
        if k > self.kept(n):
            raise DecodeError(f"{k} entries of a tensor of {n} values; fraction {self.fraction} allows {self.kept(n)}")
        if k and not (int(index[0]) >= 0 and int(index[-1]) < n):
            raise DecodeError(f"an index lies outside 0..{n - 1}")
        if k > 1 and not bool((index[1:] > index[:-1]).all()):
            raise DecodeError("indices repeat or are not increasing")
        return shape

    def decode_tensor(self, parts: Parts, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.zeros(math.prod(shape), dtype=torch.float32)
        out[parts["index"].to(torch.int64)] = parts["value"]
        return out.view(shape)
