"""Real data that ships offline, and the non-IID split that makes federated learning hard.

``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images). A fixed,
seeded test split is held out; the rest is partitioned across trainers with a
Dirichlet(alpha) distribution over labels, so each trainer sees a skewed mix.
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


def load_digits_split(test_fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, test) of the digits set, features scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    as_split = lambda idx: Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return as_split(train), as_split(test)


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
