"""What a codec is: how one float32 tensor becomes a few small named parts, and back.

A codec is a frozen dataclass whose fields are its parameters; they are written into every
blob's header, so a blob decodes on its own. ``encode_tensor`` takes a contiguous float32 CPU
tensor. ``check`` validates one tensor's parts as read from a blob and returns the shape they
decode to, allocating nothing; ``decode_tensor`` then allocates the float32 result. Tensors that
are not float32 (integer buffers, other widths) never reach a codec: they ride raw
(``container.py``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from prime.core.errors import DecodeError

Parts = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Codec(ABC):
    name: ClassVar[str]
    #: Part names of one coded tensor (a blob holds exactly these for each, or ``raw``).
    parts: ClassVar[frozenset[str]]
    #: Decoding gives back exactly what was encoded.
    lossless: ClassVar[bool] = False
    #: A trainer keeps what was not sent and adds it to its next delta (``feedback.py``).
    error_feedback: ClassVar[bool] = False
    #: Stored as plain safetensors, tensors under their own names, no header of ours (fp32).
    plain: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for parameters out of range."""

    def params(self) -> dict[str, int | float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({params})" if params else self.name

    @abstractmethod
    def encode_tensor(self, tensor: torch.Tensor) -> Parts:
        """The parts of one contiguous float32 CPU tensor."""

    @abstractmethod
    def check(self, parts: Parts) -> tuple[int, ...]:
        """The shape ``parts`` decode to; ``DecodeError`` if they are not this codec's. Allocates nothing."""

    @abstractmethod
    def decode_tensor(self, parts: Parts, shape: tuple[int, ...]) -> torch.Tensor:
        """The float32 tensor of checked ``parts``."""


def part(parts: Parts, key: str, dtypes: tuple[torch.dtype, ...], ndim: int | None = None) -> torch.Tensor:
    """``parts[key]`` if its dtype (and number of dimensions) are as a codec writes them."""
    value = parts[key]
    if value.dtype not in dtypes:
        raise DecodeError(f"part {key!r} is {value.dtype}, expected {' or '.join(map(str, dtypes))}")
    if ndim is not None and value.dim() != ndim:
        raise DecodeError(f"part {key!r} has {value.dim()} dimensions, expected {ndim}")
    return value
