"""A trainer's batch order: a pure function of (seed, epoch), so a position is two integers.

A trainer restarted from a checkpoint sees exactly the batches it would have seen: the
data position (epoch, next batch) is in the checkpoint. On a multi-rank node every rank
walks the same global batches and takes its own slice of each, so the node's update is
what one process computes on the whole batch.

A reproducible round (``training.reproducible_rounds``) walks its own order instead, from
epoch 0 batch 0 under :func:`round_seed`: public inputs only, so a verifier that knows the
job, the round and the shard walks the very same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from prime.core.errors import TrainerError


@dataclass(frozen=True)
class DataPosition:
    """The next batch a trainer will train on: batch ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.batch]

    @classmethod
    def from_list(cls, value: list[int]) -> "DataPosition":
        epoch, batch = (int(v) for v in value)
        return cls(epoch, batch)


@dataclass(frozen=True)
class Batch:
    index: torch.Tensor  # sample indices of the whole (node-wide) batch
    epoch: int
    number: int  # position of this batch within its epoch
    last: bool  # the epoch's last batch

    @property
    def next_position(self) -> DataPosition:
        return DataPosition(self.epoch + 1, 0) if self.last else DataPosition(self.epoch, self.number + 1)


_U64 = (1 << 64) - 1


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    # Modulo 2**64, as torch takes a generator seed (a no-op for every seed torch accepted before,
    # so orders are unchanged; it lets a 63-bit round seed through).
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & _U64)
    return torch.randperm(num_samples, generator=generator)


def round_seed(job_id: str, round_number: int, shard: int, seed: int) -> int:
    """The batch-order seed of one reproducible round: SHA-256 of (job, round, shard, training.seed).

    Public inputs only, so a verifier derives it too; 63 bits, so it travels as an int64 to a
    node's other ranks."""
    text = "\0".join(("prime/round-order/v1", job_id, str(round_number), str(shard), str(seed)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int = 1, *, drop_last: bool = False) -> int:
    """Batches one epoch of ``num_samples`` yields (see :func:`global_batches`)."""
    if batch_size % world_size:
        raise TrainerError(f"training.batch_size {batch_size} does not split evenly across this node's "
                           f"{world_size} ranks")
    full, rest = divmod(num_samples, batch_size)
    per_epoch = full + (1 if rest and not drop_last and world_size == 1 else 0)
    if per_epoch == 0:
        raise TrainerError(f"the shard has {num_samples} samples, fewer than one batch of {batch_size}")
    return per_epoch


def global_batches(num_samples: int, batch_size: int, seed: int, start: DataPosition,
                   world_size: int = 1, *, drop_last: bool = False) -> Iterator[Batch]:
    """Batches from ``start`` on, epoch after epoch, forever.

    An epoch's short last batch is kept unless ``drop_last``; several ranks always drop it, so
    every rank's slice of every batch is the same size."""
    per_epoch = batches_per_epoch(num_samples, batch_size, world_size, drop_last=drop_last)
    epoch, number = start.epoch, start.batch
    while True:
        order = epoch_order(num_samples, seed, epoch)
        while number < per_epoch:
            index = order[number * batch_size:(number + 1) * batch_size]
            yield Batch(index, epoch, number, number == per_epoch - 1)
            number += 1
        epoch, number = epoch + 1, 0


def rank_slice(index: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a node-wide batch."""
    return index if world_size == 1 else index[rank::world_size]
