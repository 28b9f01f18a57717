"""``int8``: blockwise absmax quantization, about 1 byte a value (INTELLECT-1 sent its
pseudo-gradients this way).

Each run of ``block_size`` consecutive values (in row-major order; the last block may be
shorter) shares one float32 scale, its largest magnitude / 127; a value is sent as
round(x / scale) in [-127, 127]. The error is at most scale / 2 per value, half of the block's
absmax / 127, and one outlier costs precision only in its own block. A non-finite value makes
its whole block decode non-finite (then refused), never silently finite.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from prime.codecs.base import Codec, Parts, part
from prime.core.errors import DecodeError

#: Values quantized per pass: bounds the float32 temporary whatever the tensor's size.
_CHUNK = 1 << 20
MAX_BLOCK_SIZE = 1 << 24


def _quantize(blocks: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """Rows of ``blocks`` into ``q`` (int8) and ``scale`` (one float32 per row), a chunk of rows at a time."""
    rows = max(1, _CHUNK // max(1, blocks.shape[1]))
    for start in range(0, blocks.shape[0], rows):
        chunk = blocks[start:start + rows]
        low, high = torch.aminmax(chunk, dim=1)
        absmax = torch.maximum(high, -low)
        torch.div(absmax, 127.0, out=scale[start:start + rows])
        inverse = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
        q[start:start + rows].copy_(torch.mul(chunk, inverse[:, None]).round_().clamp_(-127, 127))


@dataclasses.dataclass(frozen=True)
class Int8(Codec):
    name: ClassVar[str] = "int8"
    parts: ClassVar[frozenset[str]] = frozenset({"q", "scale"})
    block_size: int = 256

    def validate(self) -> None:
        if type(self.block_size) is not int or not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"int8 block_size must be an integer in 1..{MAX_BLOCK_SIZE}, got {self.block_size!r}")

    def _blocks(self, n: int) -> tuple[int, int]:
        """(full blocks, values in the short last block) of a tensor of ``n`` values."""
        return n // self.block_size, n % self.block_size

    def encode_tensor(self, tensor: torch.Tensor) -> Parts:
        flat = tensor.reshape(-1)
        n, b = flat.numel(), self.block_size
        full, tail = self._blocks(n)
        q = torch.empty(n, dtype=torch.int8)
        scale = torch.empty(full + (tail > 0), dtype=torch.float32)
        if full:
            _quantize(flat[:full * b].view(full, b), q[:full * b].view(full, b), scale[:full])
        if tail:
            _quantize(flat[full * b:].view(1, tail), q[full * b:].view(1, tail), scale[full:])
        return {"q": q.view(tensor.shape), "scale": scale}

    def check(self, parts: Parts) -> tuple[int, ...]:
        q = part(parts, "q", (torch.int8,))
        scale = part(parts, "scale", (torch.float32,), ndim=1)
        full, tail = self._blocks(q.numel())
        if scale.numel() != full + (tail > 0):
            raise DecodeError(f"{scale.numel()} scales for {q.numel()} values in blocks of {self.block_size}")
        return tuple(q.shape)

    def decode_tensor(self, parts: Parts, shape: tuple[int, ...]) -> torch.Tensor:
        q, scale = parts["q"], parts["scale"]
        out = q.reshape(-1).to(torch.float32)
        b = self.block_size
        full, tail = self._blocks(out.numel())
        if full:
            out[:full * b].view(full, b).mul_(scale[:full, None])
        if tail:
            out[full * b:].mul_(scale[full])
        return out.view(shape)
