"""``fp16`` and ``bf16``: two bytes a value, half the bytes of fp32.

fp16 keeps 11 significant bits (relative error at most 2⁻¹¹ for |x| ≥ 6.1e-5, absolute at most
2⁻²⁵ below) but overflows to inf beyond ±65504 (such an update is then refused as not finite);
bf16 keeps fp32's range with 8 significant bits (relative error at most 2⁻⁸): the safer choice
for weights, fp16 the more precise one for small deltas. Both round to nearest even.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from prime.codecs.base import Codec, Parts, part


@dataclasses.dataclass(frozen=True)
class _Half(Codec):
    parts: ClassVar[frozenset[str]] = frozenset({"half"})
    dtype: ClassVar[torch.dtype]

    def encode_tensor(self, tensor: torch.Tensor) -> Parts:
        return {"half": tensor.to(self.dtype)}

    def check(self, parts: Parts) -> tuple[int, ...]:
        return tuple(part(parts, "half", (self.dtype,)).shape)

    def decode_tensor(self, parts: Parts, shape: tuple[int, ...]) -> torch.Tensor:
        return parts["half"].to(torch.float32)


@dataclasses.dataclass(frozen=True)
class FP16(_Half):
    name: ClassVar[str] = "fp16"
    dtype: ClassVar[torch.dtype] = torch.float16


@dataclasses.dataclass(frozen=True)
class BF16(_Half):
    name: ClassVar[str] = "bf16"
    dtype: ClassVar[torch.dtype] = torch.bfloat16
