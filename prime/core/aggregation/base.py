"""The ``Strategy`` interface, and the two parts every strategy here is made of.

Updates are *deltas* (local weights minus the global weights the round started from).
Per round the coordinator calls ``begin(global_state)``, ``add(contribution)`` once per
verified update in arrival order, then ``finish() -> RoundResult``. A strategy instance
lives across rounds and holds the *server state* (momentum, moments, clip norm, round
counter): ``state_dict()`` gives it as tensors only (safetensors-ready, scalars 0-d) and
``load_state_dict`` restores it exactly. Only ``finish`` changes that state, and only
once it cannot fail any more, so an abandoned round (``begin`` again without
``finish``) or a ``finish`` that raised leaves it untouched.

A :class:`ComposedStrategy` (``composed.py``) is an :class:`Aggregator` (the round's
updates → one aggregate delta, the pseudo-gradient with the sign of an update) followed
by a :class:`ServerOptimizer` (global + aggregate → new global). Both are written as
functions of an explicit state: they return their new state instead of mutating it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

StateDict = dict[str, torch.Tensor]
#: Server state of one part: tensors only, scalars as 0-d tensors.
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Contribution:
    """One accepted update as the strategy sees it."""

    contributor: bytes
    delta: StateDict
    num_samples: int


@dataclass(frozen=True)
class RoundResult:
    """What ``finish`` hands back.

    ``state``: the new global model, each tensor in the global tensor's dtype.
    ``scores``: every added contributor's share of the aggregate as the strategy sees
    it (finite, non-negative, summing to 1 unless every weight was 0; each strategy's
    docstring says what its share is). ``dropped``: the contributors the strategy
    excluded, exactly those whose share is 0 (not selected by Krum/Bulyan, trimmed in
    every coordinate, or weight 0).
    """

    state: StateDict
    scores: dict[bytes, float]
    dropped: set[bytes] = field(default_factory=set)

    def __iter__(self) -> Iterator[Any]:
        # Transitional: lets ``new_state, scores = strategy.finish()`` keep working
        # until every caller reads the fields. Remove with the last such caller.
        return iter((self.state, self.scores))


@dataclass(frozen=True)
class Requirement:
    """The fewest updates per round a strategy works with, and the rule behind it."""

    minimum: int
    rule: str  # e.g. "more than 2f+2 = 6"


@dataclass(frozen=True)
class Aggregate:
    """An aggregator's answer: the aggregate delta (fresh float32 tensors the caller
    owns), or None when nothing is to be applied (every weight was zero)."""

    delta: StateDict | None
    scores: dict[bytes, float]
    dropped: set[bytes]


class Aggregator(ABC):
    """The round's updates → one aggregate delta, plus each contributor's share.

    ``begin``/``add`` hold per-round data only; persistent state comes in through
    ``begin`` and the new one goes out of ``finish``. ``add`` is called only after the
    strategy checked names, shapes, duplicates and the ``max_updates`` cap.
    """

    streaming: ClassVar[bool]
    #: In-memory aggregators keep at most this many updates per round (None: streaming).
    max_updates: int | None = None

    #: Prefixes of the per-tensor buffers in its state (``prefix + tensor name``).
    buffer_prefixes: ClassVar[tuple[str, ...]] = ()

    def requirement(self) -> Requirement:
        return Requirement(1, "at least 1")

    def initial_state(self) -> State:
        return {}

    def owns(self, key: str) -> bool:
        """Whether ``key`` may appear in this part's state."""
        return key in self.initial_state() or key.startswith(self.buffer_prefixes)

    @abstractmethod
    def begin(self, template: StateDict, state: State) -> None:
        """Start a round; ``template`` gives names, shapes and devices."""

    @abstractmethod
    def add(self, contribution: Contribution) -> None:
        """Fold in (streaming) or keep (in-memory) one checked contribution."""

    @abstractmethod
    def finish(self, state: State) -> tuple[Aggregate, State]:
        """The aggregate of a non-empty round and the new state; drops round data."""

    @abstractmethod
    def reset(self) -> None:
        """Drop whatever the round holds."""


class ServerOptimizer(ABC):
    """Applies an aggregate delta to the global model (float32 in, float32 out)."""

    buffer_prefixes: ClassVar[tuple[str, ...]] = ()

    def initial_state(self) -> State:
        return {}

    def owns(self, key: str) -> bool:
        return key in self.initial_state() or key.startswith(self.buffer_prefixes)

    @abstractmethod
    def step(self, state: State, params: StateDict, delta: StateDict,
             owned: bool) -> tuple[StateDict, State]:
        """New parameters and new state; mutates neither input (``delta`` may be
        reused in place when ``owned``). ``params`` may alias the global model."""


class Strategy(ABC):
    """Aggregates deltas into a new global model and scores each contributor.

    ``streaming`` is True when the strategy folds each update in as it arrives and
    holds only running sums; False when it keeps every update of the round in memory
    (then ``max_updates`` caps the round and ``add`` beyond it raises ``ValueError``).
    """

    name: ClassVar[str]
    streaming: ClassVar[bool]
    #: FedProx's μ, for the trainer (0: no proximal term).
    proximal_mu: float = 0.0

    @abstractmethod
    def begin(self, global_state: StateDict) -> None:
        """Start a round from ``global_state`` (abandons an open round)."""

    @abstractmethod
    def add(self, contribution: Contribution) -> None:
        """Fold in one verified contribution."""

    @abstractmethod
    def finish(self) -> RoundResult:
        """Close the round: new global state, scores, dropped; advances server state."""

    @abstractmethod
    def state_dict(self) -> State:
        """Server state as tensors; the strategy never mutates them afterwards."""

    @abstractmethod
    def load_state_dict(self, state: State) -> None:
        """Restore what ``state_dict`` gave (copies it)."""

    @abstractmethod
    def requirement(self) -> Requirement:
        """The fewest updates per round this strategy accepts in ``finish``, and why."""

    def min_clients_required(self) -> int:
        return self.requirement().minimum

    @property
    def max_updates(self) -> int | None:
        """Most updates ``add`` takes per round (None: streaming, no cap)."""
        return None
