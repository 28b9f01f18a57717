"""The data a task hands the engine, and the label-skewed split that makes federated learning hard.

A ``Split`` is inputs and targets indexed by sample (for language models, windows of a
byte stream). ``dirichlet_partition`` deals a labelled set out to trainers with a
Dirichlet(alpha) distribution over labels per class, so each trainer sees a skewed mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def dirichlet_partition(labels: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Split sample indices into ``num_partitions`` label-skewed shards, none empty.

    For each class, draw proportions ~ Dir(alpha) over partitions and deal that
    class's samples out accordingly. Smaller alpha means more skew.
    """
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(num_partitions)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (np.cumsum(rng.dirichlet([alpha] * num_partitions)) * len(idx)).astype(int)[:-1]
        for shard, part in zip(shards, np.split(idx, cuts)):
            shard.extend(part.tolist())
    # Guarantee every trainer has data: move samples from the largest shard to empty ones.
    for shard in shards:
        if not shard:
            donor = max(shards, key=len)
            shard.extend(donor[-max(1, len(donor) // 10):])
            del donor[-max(1, len(donor) // 10):]
    return [np.array(sorted(s), dtype=np.int64) for s in shards]


def partition(train: Split, num_partitions: int, index: int, alpha: float, seed: int) -> Split:
    """The ``index``-th Dirichlet shard of ``train``."""
    if not 0 <= index < num_partitions:
        raise ValueError(f"partition index {index} outside 0..{num_partitions - 1}")
    shards = dirichlet_partition(train.y.numpy(), num_partitions, alpha, seed)
    idx = torch.from_numpy(shards[index])
    return Split(train.x[idx], train.y[idx])
