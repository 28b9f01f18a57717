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
from prime.core.errors import TaskError

StateDict = dict[str, torch.Tensor]


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


def whole_state(options: Any, model: nn.Module, state: StateDict) -> StateDict:
    """The default exchanged state: all of it (every parameter and persistent buffer)."""
    return state


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
    - ``exchanged_state(options, model, state)``: the part of ``state`` (``model.state_dict()``) that
      moves between participants and is aggregated, committed and exported: by default all of it; a
      fine-tuning task returns its adapters only (possibly under other names, e.g. PEFT's). The values
      must be entries of ``state`` itself (not copies), so that ``Task.exchanged_names`` can map each
      exchanged name back to the model's own; everything not exchanged is rebuilt by ``build_model``.
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
    exchanged_state: Callable[[Any, nn.Module, StateDict], StateDict] = whole_state

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

    # -- the exchanged state: what moves, is aggregated, committed and exported --------------
    @property
    def exchanges_whole_state(self) -> bool:
        return self.spec.exchanged_state is whole_state

    def exchanged_names(self, model: nn.Module) -> dict[str, str]:
        """Exchanged name → the model's own ``state_dict`` name, in the exchanged state's order."""
        state = model.state_dict()
        if self.exchanges_whole_state:
            return {k: k for k in state}
        own = {id(v): k for k, v in state.items()}
        picked = self.spec.exchanged_state(self.options, model, state)
        names = {}
        for name, value in picked.items():
            if id(value) not in own:
                raise TaskError(f"task {self.name!r}: exchanged_state returned {name!r}, which is not an entry of "
                                "the model's state_dict (return entries of the state it is given, not copies)")
            names[name] = own[id(value)]
        if not names:
            raise TaskError(f"task {self.name!r}: exchanged_state picks nothing of the model: nothing would be trained")
        return names

    def exchanged_state(self, model: nn.Module) -> StateDict:
        """What this model would send: ``spec.exchanged_state`` of its ``state_dict`` (live tensors)."""
        state = model.state_dict()
        return dict(self.spec.exchanged_state(self.options, model, state))

    def load_exchanged_state(self, model: nn.Module, state: StateDict) -> None:
        """Load an exchanged state into ``model``: exactly the exchanged names, nothing else touched."""
        if self.exchanges_whole_state:
            model.load_state_dict(state, strict=True)
            return
        names = self.exchanged_names(model)
        if set(state) != set(names):
            missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
            raise TaskError(f"task {self.name!r}: the state does not fit this model's exchanged part: "
                            f"missing {missing[:5]}, unexpected {extra[:5]}")
        _, unexpected = model.load_state_dict({names[k]: v for k, v in state.items()}, strict=False)
        if unexpected:  # cannot happen for names taken from the model's own state_dict
            raise TaskError(f"task {self.name!r}: unexpected names {unexpected[:5]}")
