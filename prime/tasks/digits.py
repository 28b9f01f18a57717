"""Task ``digits``: an MLP classifying scikit-learn's bundled 8×8 handwritten digits.

1,797 images ship with scikit-learn, so every machine has the data offline. A fixed,
seeded test split is held out for the coordinator; the rest is cut into label-skewed
shards (Dirichlet(alpha) over labels per shard), so each trainer sees a skewed mix: the
classic non-IID federated benchmark.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from prime.core.datasets import Split, partition
from prime.core.errors import TaskError
from prime.tasks.metrics import evaluate_classifier
from prime.tasks.spec import DataSource, Shard, TaskOptions, TaskSpec

INPUT_DIM, NUM_CLASSES = 64, 10


class DigitsOptions(TaskOptions):
    hidden: list[int] = Field(default_factory=lambda: [128])
    #: Label skew across shards: smaller is more skewed.
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    #: Fraction of the images held out for the coordinator's evaluation.
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    #: Seed of the train/test split and of the Dirichlet shards (the same on every participant).
    split_seed: int = 0


class MLP(nn.Module):
    """A plain multi-layer perceptron; each ``Linear`` is a natural FSDP2 shard unit."""

    def __init__(self, input_dim: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        dims = [input_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def digits_file() -> Path:
    """The digits set scikit-learn ships, found without importing scikit-learn: its import
    costs every coordinator and trainer process about 1.5 s, more than reading the file."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise TaskError("task digits needs scikit-learn's bundled digits.csv.gz: install scikit-learn")
    return path


@lru_cache(maxsize=4)
def load_digits_split(test_fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, test) of the digits set, features scaled to [0, 1]."""
    with gzip.open(digits_file(), "rt") as rows:  # what sklearn.datasets.load_digits reads, the same way
        data = np.loadtxt(rows, delimiter=",")
    x = (data[:, :-1] / 16.0).astype(np.float32)
    y = data[:, -1].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    as_split = lambda idx: Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return as_split(train), as_split(test)


def _build_model(options: DigitsOptions, seed: int) -> nn.Module:
    return MLP(INPUT_DIM, options.hidden, NUM_CLASSES)


def _load_shard(options: DigitsOptions, shard: Shard) -> Split:
    train, _ = load_digits_split(options.test_fraction, options.split_seed)
    return partition(train, shard.count, shard.index, options.dirichlet_alpha, options.split_seed)


def _load_validation(options: DigitsOptions, data_path: Path | None) -> Split:
    return load_digits_split(options.test_fraction, options.split_seed)[1]


def _data_source(options: DigitsOptions, shard: Shard) -> DataSource:
    """Every shard is cut from the one file scikit-learn ships (the cut is in the agreed terms)."""
    return DataSource("scikit-learn digits", importlib.metadata.version("scikit-learn"), {"digits.csv.gz": digits_file()})


def _loss(options: DigitsOptions, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _shard_units(options: DigitsOptions, model: MLP) -> list[nn.Module]:
    return [*model.layers, model.head]


spec = TaskSpec(
    name="digits",
    options=DigitsOptions,
    build_model=_build_model,
    load_shard=_load_shard,
    load_validation=_load_validation,
    loss=_loss,
    evaluate=lambda options, model, data: evaluate_classifier(model, data),
    metrics=("accuracy", "loss"),
    shard_units=_shard_units,
    public_data=True,
    data_source=_data_source,
    description="MLP on scikit-learn's 8x8 digits, Dirichlet non-IID shards",
)
