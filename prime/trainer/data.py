"""A trainer's local data: its Dirichlet shard of the job's dataset, in seeded order.

The batch order is a pure function of (seed, epoch), so a trainer restarted from a
checkpoint sees exactly the batches it would have seen: the data position is just
the epoch counter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from prime.core.config import DataConfig
from prime.core.datasets import Split, load_digits_split, partition


def partition_for(node_id: str, num_partitions: int) -> int:
    """Default shard of a node: a stable hash of its name (override with --data-partition)."""
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:4], "big") % num_partitions


def load_local_data(config: DataConfig, index: int) -> Split:
    train, _ = load_digits_split(config.test_fraction, config.seed)
    return partition(train, config.num_partitions, index, config.dirichlet_alpha, config.seed)


def load_test_data(config: DataConfig) -> Split:
    return load_digits_split(config.test_fraction, config.seed)[1]


def batches(data: Split, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx], data.y[idx]
