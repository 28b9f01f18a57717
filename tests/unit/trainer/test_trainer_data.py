"""Trainer data: deterministic batch order that covers the shard, positions that resume, rank slices."""

from __future__ import annotations

import pytest
import torch

from prime.core.errors import TrainerError
from prime.trainer.data import DataPosition, global_batches, rank_slice


def epoch(n: int, batch_size: int, seed: int, number: int, **kw) -> list[torch.Tensor]:
    out = []
    for batch in global_batches(n, batch_size, seed, DataPosition(number, 0), **kw):
        if batch.epoch != number:
            return out
        out.append(batch.index)
    return out


def test_batches_deterministic_per_seed_and_epoch():
    order = lambda seed, e: torch.cat(epoch(103, 16, seed, e))  # noqa: E731
    assert torch.equal(order(0, 0), order(0, 0))
    assert torch.equal(order(3, 5), order(3, 5))
    assert not torch.equal(order(0, 0), order(0, 1))
    assert not torch.equal(order(0, 0), order(1, 0))


def test_one_rank_covers_every_sample_once_per_epoch():
    batches = epoch(103, 16, seed=7, number=2)
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert [len(b) for b in batches] == [16] * 6 + [7]


def test_drop_last_and_several_ranks_keep_full_batches_only():
    assert [len(b) for b in epoch(103, 16, 7, 2, drop_last=True)] == [16] * 6
    assert [len(b) for b in epoch(103, 16, 7, 2, world_size=2)] == [16] * 6


def test_batch_larger_than_data():
    out = epoch(103, 1000, 0, 0)
    assert len(out) == 1 and len(out[0]) == 103
    with pytest.raises(TrainerError, match="fewer than one batch"):
        next(global_batches(103, 1000, 0, DataPosition(), drop_last=True))


def test_positions_resume_exactly_where_training_stopped():
    stream = global_batches(50, 8, 1, DataPosition())
    seen = [next(stream) for _ in range(10)]  # crosses an epoch boundary (7 batches per epoch)
    resumed = global_batches(50, 8, 1, seen[4].next_position)
    for expected in seen[5:]:
        got = next(resumed)
        assert (got.epoch, got.number, got.last) == (expected.epoch, expected.number, expected.last)
        assert torch.equal(got.index, expected.index)
    assert seen[6].last and seen[6].next_position == DataPosition(1, 0)
    assert DataPosition.from_list(DataPosition(3, 4).as_list()) == DataPosition(3, 4)


def test_rank_slices_partition_each_batch():
    index = torch.arange(12)
    parts = [rank_slice(index, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(12)) and all(len(p) == 4 for p in parts)
    assert torch.equal(rank_slice(index, 0, 1), index)
    with pytest.raises(TrainerError, match="split evenly"):
        next(global_batches(100, 10, 0, DataPosition(), world_size=3))
