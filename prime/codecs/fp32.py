"""``fp32``: no compression. Plain safetensors, byte for byte what prime sent before codecs
existed (the default, and the reference the others are measured against)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from prime.codecs.base import Codec, Parts, part


@dataclasses.dataclass(frozen=True)
class FP32(Codec):
    name: ClassVar[str] = "fp32"
    parts: ClassVar[frozenset[str]] = frozenset({"value"})
    lossless: ClassVar[bool] = True
    plain: ClassVar[bool] = True

    def encode_tensor(self, tensor: torch.Tensor) -> Parts:
        return {"value": tensor}

    def check(self, parts: Parts) -> tuple[int, ...]:
        return tuple(part(parts, "value", (torch.float32,)).shape)

    def decode_tensor(self, parts: Parts, shape: tuple[int, ...]) -> torch.Tensor:
        return parts["value"]
