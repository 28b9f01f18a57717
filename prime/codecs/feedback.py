"""Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what a lossy codec did not send
is added to the next round's delta before encoding, so it is delayed, never lost.

The residual is the trainer's own: it is never sent, and it is kept in the trainer's
checkpoint so a restart does not drop it. ``encode`` returns the blob and the new residual
(compensated − what the receiver decodes); the caller adopts the residual once the update is
out, so an update that never left does not count as sent.
"""

from __future__ import annotations

import math

import torch

from prime.codecs import container
from prime.codecs.base import Codec, Parts
from prime.core.tensors import Buffer, StateDict


class ErrorFeedback:
    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.residual: StateDict = {}

    def encode(self, delta: StateDict, *, compress: bool = False) -> tuple[list[Buffer], StateDict]:
        """The blob of ``delta`` + residual, and the residual that leaves."""
        encoded: dict[str, Parts] = {}
        residual: StateDict = {}
        for name, value in delta.items():
            value = value.detach().to("cpu")
            if not container.is_coded(value):
                encoded[name] = {"raw": value}
                continue
            old = self.residual.get(name)
            compensated = value + old if old is not None and old.shape == value.shape else value.clone()
            parts = self.codec.encode_tensor(compensated.contiguous())
            residual[name] = compensated.sub_(self.codec.decode_tensor(parts, tuple(value.shape)))
            encoded[name] = parts
        return container.pack(self.codec, encoded, compress=compress), residual

    def adopt(self, residual: StateDict) -> None:
        self.residual = residual

    def load(self, residual: StateDict, shapes: dict[str, tuple[int, ...]]) -> int:
        """Restore a checkpointed residual; entries that do not fit the model (``shapes``) are dropped.
        Returns how many tensors were kept."""
        self.residual = {name: t.to(torch.float32) for name, t in residual.items()
                         if isinstance(t, torch.Tensor) and tuple(shapes.get(name, ())) == tuple(t.shape)
                         and name in shapes}
        return len(self.residual)

    def norm(self) -> float:
        return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
                             for t in self.residual.values()))
