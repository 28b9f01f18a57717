"""FedMedian (Yin et al. 2018): the coordinate-wise median of the updates.

Each coordinate of the aggregate is the median of that coordinate over the round's
updates (for an even count, the mean of the two middle values, as ``numpy.median``);
sample counts are ignored, so a client cannot buy influence by claiming more samples.
Applied as is (server SGD at lr 1).

Memory: in memory — every update of the round is held (references, up to
``max_updates``); ``finish`` sorts one chunk of coordinates at a time (n × 64 Ki
values and their int64 indices). Score: the fraction of coordinates where the update
is the median (half a coordinate each for the two middle values of an even count);
an update that is the median nowhere is dropped.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, State
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.optimizers import SGD


class CoordinateMedian(_util.InMemory):
    def finish(self, state: State) -> tuple[Aggregate, State]:
        keys, updates, _, template = self.take()
        k = (len(updates) - 1) // 2
        delta, weight = _util.coordinatewise(updates, template, lambda x: _util.trimmed(x, k))
        return Aggregate(delta, _util.shares(keys, weight), set()), state


class FedMedian(ComposedStrategy):
    name: ClassVar[str] = "fedmedian"
    streaming: ClassVar[bool] = False

    def __init__(self, max_updates: int = 64) -> None:
        super().__init__(CoordinateMedian(max_updates), SGD(lr=1.0))
