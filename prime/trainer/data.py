"""A trainer's batch order: a pure function of (seed, epoch), so a position is two integers.

A trainer restarted from a checkpoint sees exactly the batches it would have seen: the
data position (epoch, next batch) is in the checkpoint. On a multi-rank node every rank
walks the same global batches and takes its own slice of each, so the node's update is
what one process computes on the whole batch.
"""

from __future__ import annotations

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


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


def global_batches(num_samples: int, batch_size: int, seed: int, start: DataPosition,
                   world_size: int = 1, *, drop_last: bool = False) -> Iterator[Batch]:
    """Batches from ``start`` on, epoch after epoch, forever.

    An epoch's short last batch is kept unless ``drop_last``; several ranks always drop it, so
    every rank's slice of every batch is the same size."""
    if batch_size % world_size:
        raise TrainerError(f"training.batch_size {batch_size} does not split evenly across this node's "
                           f"{world_size} ranks")
    full, rest = divmod(num_samples, batch_size)
    per_epoch = full + (1 if rest and not drop_last and world_size == 1 else 0)
    if per_epoch == 0:
        raise TrainerError(f"the shard has {num_samples} samples, fewer than one batch of {batch_size}")
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
