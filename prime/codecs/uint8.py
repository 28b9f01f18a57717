"""``uint8``: min-max quantization per tensor, 1 byte a value plus two floats a tensor.

The tensor's range [min, max] is cut into 255 equal steps and each value sent as its nearest
step (0..255): error at most (max − min) / 510 per value. Cheaper than ``int8`` by the scales,
but one outlier widens the step for the whole tensor.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from prime.codecs.base import Codec, Parts, part
from prime.core.errors import DecodeError


@dataclasses.dataclass(frozen=True)
class UInt8(Codec):
    name: ClassVar[str] = "uint8"
    parts: ClassVar[frozenset[str]] = frozenset({"q", "range"})

    def encode_tensor(self, tensor: torch.Tensor) -> Parts:
        if tensor.numel() == 0:
            return {"q": torch.empty(tensor.shape, dtype=torch.uint8), "range": torch.zeros(2)}
        low, high = torch.aminmax(tensor)
        step = (high - low) / 255.0
        if bool(step > 0):
            q = torch.sub(tensor, low).div_(step).round_().clamp_(0, 255).to(torch.uint8)
        else:  # a constant tensor (or a non-finite range: decodes non-finite)
            q = torch.zeros(tensor.shape, dtype=torch.uint8)
        return {"q": q, "range": torch.stack([low, step])}

    def check(self, parts: Parts) -> tuple[int, ...]:
        q = part(parts, "q", (torch.uint8,))
        if part(parts, "range", (torch.float32,), ndim=1).numel() != 2:
            raise DecodeError("part 'range' must hold (min, step)")
        return tuple(q.shape)

    def decode_tensor(self, parts: Parts, shape: tuple[int, ...]) -> torch.Tensor:
        low, step = parts["range"][0], parts["range"][1]
        return parts["q"].to(torch.float32).mul_(step).add_(low).view(shape)
