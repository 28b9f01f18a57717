"""Bulyan (El Mhamdi et al. 2018): Krum selection, then a coordinate-wise trimmed rule.

With n ≥ 4f + 3 updates: pick θ = n − 2f of them by Krum applied repeatedly (each
pick is the Krum winner among those not yet picked, with |R| − f − 2 neighbours, as in
the paper; Flower picks them in one MultiKrum pass). Then, per coordinate, average
the β = θ − 2f picked values closest to the picked values' median. Unweighted; ties
go to the lower contributor key. Applied as is (server SGD at lr 1).

Memory: in memory — every update of the round is held (references, up to
``max_updates``); ``finish`` builds the n × n float64 distance matrix and sorts one
chunk of coordinates at a time. Score: the fraction of the β slots per coordinate
the update filled (0 for updates not picked, which are dropped).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, Requirement, State
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.krum import select, squared_distances
from prime.core.aggregation.optimizers import SGD


def closest_to_median(x: torch.Tensor, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``x`` (θ, c): mean of the β values nearest the column's median."""
    theta = x.shape[0]
    median, _ = _util.trimmed(x, (theta - 1) // 2)
    nearest = torch.argsort((x - median).abs(), dim=0, stable=True)[:beta]
    used = torch.bincount(nearest.reshape(-1), minlength=theta).to(torch.float64) / beta
    return _util.row_mean(torch.gather(x, 0, nearest)), used


class BulyanRule(_util.InMemory):
    def __init__(self, num_malicious: int, max_updates: int) -> None:
        if num_malicious < 0:
            raise ValueError("num_malicious must be non-negative")
        super().__init__(max_updates)
        self.f = num_malicious

    def requirement(self) -> Requirement:
        return Requirement(4 * self.f + 3, f"at least 4f+3 = {4 * self.f + 3}")

    def finish(self, state: State) -> tuple[Aggregate, State]:
        keys, updates, _, template = self.take()
        n, f = len(keys), self.f
        dist = squared_distances(updates, template)
        remaining, picked = list(range(n)), []
        for _ in range(n - 2 * f):
            (winner,) = select(dist, remaining, f, 1)
            picked.append(winner)
            remaining.remove(winner)
        picked.sort()
        beta = len(picked) - 2 * f
        delta, weight = _util.coordinatewise([updates[i] for i in picked], template,
                                             lambda x: closest_to_median(x, beta))
        scores = dict.fromkeys(keys, 0.0)
        scores.update(_util.shares([keys[i] for i in picked], weight))
        return Aggregate(delta, scores, set(keys) - {keys[i] for i in picked}), state


class Bulyan(ComposedStrategy):
    name: ClassVar[str] = "bulyan"
    streaming: ClassVar[bool] = False

    def __init__(self, num_malicious: int = 0, max_updates: int = 64) -> None:
        super().__init__(BulyanRule(num_malicious, max_updates), SGD(lr=1.0))
