"""FedAvg (McMahan et al. 2017): the sample-weighted mean of client updates.

``new = global + Σ nᵢ·Δᵢ / Σ nᵢ``, accumulated in float32, one update at a time, in
place: the strategy holds one float32 accumulator per parameter and never an update.

- ``begin`` only remembers the global state: no allocation.
- the first ``add`` writes ``n₁·Δ₁`` into fresh accumulators (one pass, no zero-fill);
  each later one is one fused ``acc += nᵢ·Δᵢ``.
- ``finish`` turns the accumulators into ``acc / Σn + global`` in place.

Score: nᵢ / Σn. Float addition is not associative, so arrival order can change the
result by a few ulp (it is exact for the robust, in-memory strategies, which reduce in
contributor-key order). A round whose weights sum to 0 keeps the global model and
drops everyone.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, Aggregator, Contribution, State, StateDict
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.optimizers import SGD


class WeightedMean(Aggregator):
    """Streaming Σnᵢ·Δᵢ / Σnᵢ: one float32 accumulator per parameter."""

    streaming: ClassVar[bool] = True

    def __init__(self) -> None:
        self._sum: StateDict = {}
        self._weights: dict[bytes, int] = {}

    def reset(self) -> None:
        self._sum, self._weights = {}, {}

    def begin(self, template: StateDict, state: State) -> None:
        self.reset()
        self._names = list(template)

    def add(self, contribution: Contribution) -> None:
        weight = float(contribution.num_samples)
        delta = contribution.delta
        if not self._sum:
            self._sum = {name: torch.mul(_util.f32(delta[name]), weight) for name in self._names}
        else:
            for name, acc in self._sum.items():
                acc.add_(_util.f32(delta[name]), alpha=weight)
        self._weights[contribution.contributor] = contribution.num_samples

    def finish(self, state: State) -> tuple[Aggregate, State]:
        total = sum(self._weights.values())
        acc, weights = self._sum, self._weights
        self.reset()
        if total <= 0:
            return Aggregate(None, {k: 0.0 for k in weights}, set(weights)), state
        for t in acc.values():
            t.div_(total)
        return Aggregate(acc, {k: n / total for k, n in weights.items()}, set()), state


class FedAvg(ComposedStrategy):
    """Sample-weighted mean of the updates, applied as is (server SGD at lr 1)."""

    name: ClassVar[str] = "fedavg"
    streaming: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__(WeightedMean(), SGD(lr=1.0))
