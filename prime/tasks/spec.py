"""The task spec: everything the participants of a job must agree on to train one thing.

A ``TaskSpec`` bundles the model builder, the data (a trainer's shard, and the held-out
validation set only the coordinator reads), the loss, the evaluation metrics, which
modules become FSDP2 shard units, and the task's own options (a pydantic model, so a bad
option is an error naming its key and file). The coordinator, the trainers, the demo and
the benchmarks all build from it; nothing else in prime names a model, a data set or a
loss. Modelled on torchtitan's ``TrainSpec``: a frozen bundle of plain callables.

A user task is any module attribute that is a ``TaskSpec``, named in the job config as
``[task] name = "my_pkg.tasks:spec"`` or published under the ``prime.tasks`` entry-point
group (``prime/tasks/registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from prime.core.datasets import Split


class TaskOptions(BaseModel):
    """Base for a task's options: frozen, and unknown keys are errors (a typo must not train defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Shard:
    """Which part of the task's training data one trainer trains on."""

    index: int
    count: int
    #: A directory or file the task reads (``--data-path``); None: the task's built-in source.
    data_path: Path | None = None


@dataclass(frozen=True)
class DataSource:
    """What a trainer's shard is read from: the data set's name and version, and every file the
    shard reads (name relative to the data root → path). The job manifest pins each file's digest."""

    name: str
    version: str
    files: Mapping[str, Path]


def default_shard_units(model: nn.Module) -> list[nn.Module]:
    """FSDP2 shard units when a task names none: every direct child that holds parameters."""
    return [child for child in model.children() if any(True for _ in child.parameters())]


@dataclass(frozen=True)
class TaskSpec:
    """One trainable thing. Every callable gets the task's validated options first.

    - ``build_model(options, seed)``: the same architecture and, for one seed, the same initial
      weights on every participant.
    - ``load_shard(options, shard)``: a trainer's training data (``Split``: inputs and targets,
      indexed by sample).
    - ``load_validation(options, data_path)``: held-out data; only the coordinator reads it.
    - ``loss(options, model, x, y)``: the mean training loss of one batch (a scalar tensor).
    - ``evaluate(options, model, data)``: metrics of a model on held-out data, names as in ``metrics``.
    - ``shard_units(options, model)``: the modules that become FSDP2 shard units (and, when the job
      asks, activation-checkpointed and compiled units), innermost first; the root is sharded last.
    """

    name: str
    options: type[TaskOptions]
    build_model: Callable[[Any, int], nn.Module]
    load_shard: Callable[[Any, Shard], Split]
    load_validation: Callable[[Any, Path | None], Split]
    loss: Callable[[Any, nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[Any, nn.Module, Split], dict[str, float]]
    #: Metric names ``evaluate`` reports; the first is the headline the demo and status show.
    metrics: tuple[str, ...]
    #: True when lower is better for the headline metric (loss, bits per byte); False for accuracy.
    lower_is_better: bool = False
    shard_units: Callable[[Any, nn.Module], Iterable[nn.Module]] = lambda options, model: default_shard_units(model)
    #: Tokens in one sample, for throughput figures (1 for classification, the sequence length for LMs).
    tokens_per_sample: Callable[[Any], int] = lambda options: 1
    #: Samples per micro-batch given ``training.batch_size`` (a language model may size its batches in tokens).
    batch_size: Callable[[Any, int], int] = lambda options, configured: configured
    #: Every participant can read every shard (built-in data sets), so a verifier can recompute any
    #: trainer's round (spot checks, ``prime verify``). False for private data: checks are inconclusive.
    #: Declare it only if every participant reads the same bytes and the loss draws no random numbers
    #: (dropout): otherwise an honest trainer's round does not recompute and fails its check.
    public_data: bool = False
    description: str = ""
    #: ``data_source(options, shard)``: the data set and the files a shard reads (``DataSource``), for the
    #: job manifest's per-file digests (``prime manifest build``). None: a manifest cannot pin this task's data.
    data_source: Callable[[Any, Shard], DataSource] | None = None

    def bind(self, options: TaskOptions) -> "Task":
        return Task(self, options)


@dataclass(frozen=True)
class Task:
    """A spec bound to its validated options: what the engine, coordinator and demo call."""

    spec: TaskSpec
    options: TaskOptions

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.spec.metrics

    def build_model(self, seed: int) -> nn.Module:
        """The task's model with deterministic initial weights; the global RNG is left untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.spec.build_model(self.options, seed)

    def load_shard(self, shard: Shard) -> Split:
        return self.spec.load_shard(self.options, shard)

    def load_validation(self, data_path: Path | None = None) -> Split:
        return self.spec.load_validation(self.options, data_path)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.spec.loss(self.options, model, x, y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Split) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            return {k: float(v) for k, v in self.spec.evaluate(self.options, model, data).items()}
        finally:
            model.train(was_training)

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        return list(self.spec.shard_units(self.options, model))

    def tokens_per_sample(self) -> int:
        return int(self.spec.tokens_per_sample(self.options))

    def batch_size(self, configured: int) -> int:
        return int(self.spec.batch_size(self.options, configured))

    def data_source(self, shard: Shard) -> DataSource | None:
        return None if self.spec.data_source is None else self.spec.data_source(self.options, shard)

    def options_dict(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json")
