"""FedTrimmedAvg (Yin et al. 2018): the coordinate-wise β-trimmed mean of the updates.

For each coordinate, drop the k = ⌊β·n⌋ lowest and k highest values over the round's n
updates and average the rest (unweighted, as Flower and ``scipy.stats.trim_mean``);
needs 2k < n, which β < 0.5 guarantees. β = 0 is the plain mean. Applied as is.

Memory: in memory — every update of the round is held (references, up to
``max_updates``); ``finish`` sorts one chunk of coordinates at a time. Score: the
fraction of the kept slots the update filled, i.e. (coordinates where it was kept) /
(coordinates · (n − 2k)); an update trimmed everywhere is dropped.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, State
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.optimizers import SGD


def trim_count(beta: float, n: int) -> int:
    """k = ⌊β·n⌋ values trimmed at each end (``int(β·n)``, as Flower and scipy)."""
    return int(beta * n)


class TrimmedMean(_util.InMemory):
    def __init__(self, beta: float, max_updates: int) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError("beta must be in [0, 0.5)")
        super().__init__(max_updates)
        self.beta = beta

    def finish(self, state: State) -> tuple[Aggregate, State]:
        keys, updates, _, template = self.take()
        k = trim_count(self.beta, len(updates))
        delta, weight = _util.coordinatewise(updates, template, lambda x: _util.trimmed(x, k))
        return Aggregate(delta, _util.shares(keys, weight), set()), state


class FedTrimmedAvg(ComposedStrategy):
    name: ClassVar[str] = "fedtrimmedavg"
    streaming: ClassVar[bool] = False

    def __init__(self, beta: float = 0.2, max_updates: int = 64) -> None:
        super().__init__(TrimmedMean(beta, max_updates), SGD(lr=1.0))
