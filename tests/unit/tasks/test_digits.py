"""Task ``digits``: the split, the Dirichlet partition, and the spec the engine and coordinator use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prime.core.datasets import dirichlet_partition, partition
from prime.tasks import Shard, resolve_task
from prime.tasks.digits import load_digits_split

N_DIGITS = 1797


@pytest.fixture(scope="module")
def split():
    return load_digits_split(0.2, seed=0)


def test_split_sizes_and_scaling(split):
    train, test = split
    assert len(test) == round(N_DIGITS * 0.2) == 359
    assert len(train) == N_DIGITS - 359
    assert train.x.shape == (len(train), 64) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert set(train.y.tolist()) == set(range(10))


def test_split_deterministic_by_seed(split):
    train, test = split
    train2, test2 = load_digits_split(0.2, seed=0)
    assert torch.equal(train.x, train2.x) and torch.equal(test.y, test2.y)
    train3, _ = load_digits_split(0.2, seed=1)
    assert not torch.equal(train.x, train3.x)


def test_train_and_test_disjoint(split):
    train, test = split
    rows = {tuple(r) for r in train.x.numpy().round(4).tolist()}
    # digits has a few duplicate images; the vast majority of test rows must be unseen
    overlap = sum(tuple(r) in rows for r in test.x.numpy().round(4).tolist())
    assert overlap < 10


@pytest.mark.parametrize("k, alpha, seed", [(4, 0.5, 0), (10, 0.05, 3), (7, 100.0, 1), (30, 0.01, 2), (1, 0.5, 0)])
def test_partition_covers_every_index_once_no_empty(split, k, alpha, seed):
    labels = split[0].y.numpy()
    shards = dirichlet_partition(labels, k, alpha, seed)
    assert len(shards) == k
    assert all(len(s) > 0 for s in shards)
    flat = np.concatenate(shards)
    assert len(flat) == len(labels)
    assert np.array_equal(np.sort(flat), np.arange(len(labels)))


def test_partition_deterministic(split):
    labels = split[0].y.numpy()
    a = dirichlet_partition(labels, 5, 0.3, 9)
    b = dirichlet_partition(labels, 5, 0.3, 9)
    c = dirichlet_partition(labels, 5, 0.3, 10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _skew(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    """Mean over shards of the share of the shard's most common label."""
    return float(np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shards]))


def test_skew_increases_as_alpha_decreases(split):
    labels = split[0].y.numpy()
    skew = {a: np.mean([_skew(labels, dirichlet_partition(labels, 5, a, s)) for s in range(5)])
            for a in (0.05, 0.5, 100.0)}
    assert skew[0.05] > skew[0.5] > skew[100.0]
    assert skew[100.0] < 0.2  # near-IID: about 1/10 per label
    assert skew[0.05] > 0.5


def test_partition_split(split):
    train = split[0]
    shard = partition(train, 4, 2, 0.5, 0)
    idx = dirichlet_partition(train.y.numpy(), 4, 0.5, 0)[2]
    assert torch.equal(shard.y, train.y[torch.from_numpy(idx)])
    assert torch.equal(shard.x, train.x[torch.from_numpy(idx)])
    for bad in (-1, 4):
        with pytest.raises(ValueError):
            partition(train, 4, bad, 0.5, 0)


def test_task_shards_are_disjoint_and_cover_the_training_set():
    task = resolve_task("digits", {"dirichlet_alpha": 0.5})
    shards = [task.load_shard(Shard(i, 4)) for i in range(4)]
    validation = task.load_validation()
    assert sum(len(s) for s in shards) + len(validation) == N_DIGITS
    rows = [tuple(r) for s in shards for r in s.x.numpy().round(4).tolist()]
    assert len(rows) == N_DIGITS - len(validation)
    assert torch.equal(task.load_shard(Shard(1, 4)).x, shards[1].x)  # the same shard on every machine


def test_task_model_loss_metrics_and_shard_units():
    task = resolve_task("digits", {"hidden": [32, 16]})
    model = task.build_model(0)
    data = task.load_validation()
    loss = task.loss(model, data.x[:8], data.y[:8])
    assert loss.ndim == 0 and loss.requires_grad
    metrics = task.evaluate(model, data)
    assert set(metrics) == {"accuracy", "loss"} and 0.0 <= metrics["accuracy"] <= 1.0
    assert model.training  # evaluate leaves the mode as it found it
    units = task.shard_units(model)
    assert [type(u).__name__ for u in units] == ["Linear", "Linear", "Linear"]
    assert task.metrics[0] == "accuracy" and task.tokens_per_sample() == 1


def test_the_images_are_scikit_learns(split):
    """Read without importing scikit-learn, they are exactly what ``load_digits`` returns."""
    from sklearn.datasets import load_digits

    reference = load_digits()
    train, test = split
    ours = torch.cat([train.x, test.x]), torch.cat([train.y, test.y])
    order = np.random.default_rng(0).permutation(N_DIGITS)
    n_test = round(N_DIGITS * 0.2)
    order = np.concatenate([order[n_test:], order[:n_test]])  # train then test, as the split cuts them
    assert torch.equal(ours[0], torch.from_numpy((reference.data[order] / 16.0).astype(np.float32)))
    assert torch.equal(ours[1], torch.from_numpy(reference.target[order].astype(np.int64)))
