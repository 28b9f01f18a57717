"""Krum and MultiKrum (Blanchard et al. 2017; El Mhamdi et al. 2018).

With n updates of which at most f are Byzantine, each update's Krum score is the sum
of its squared L2 distances to its n − f − 2 nearest other updates (needs n > 2f + 2).
MultiKrum keeps the m lowest-scoring updates and averages them weighted by sample
count (as Flower); Krum is MultiKrum with m = 1. Ties go to the lower contributor key.
Applied as is (server SGD at lr 1).

Memory: in memory — every update of the round is held (references, up to
``max_updates``); ``finish`` builds the n × n distance matrix in float64 from exact
pairwise differences, one chunk of coordinates at a time (O(n²·P) work).
Score: the update's weight in the mean of the selected (nᵢ / Σ selected n); updates
not selected score 0 and are dropped.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, Requirement, State, StateDict
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.optimizers import SGD


def squared_distances(updates: list[StateDict], template: StateDict) -> torch.Tensor:
    """(n, n) float64 matrix of squared L2 distances over all tensors (sorted names)."""
    n = len(updates)
    dist = torch.zeros(n, n, dtype=torch.float64)
    for name in sorted(template):
        for _, _, x in _util.chunks(updates, name, torch.float64):  # float32 differences are exact here
            for i in range(n):
                dist[i] += (x - x[i]).square_().sum(dim=1).cpu()
    return dist


def krum_scores(dist: torch.Tensor, candidates: list[int], f: int) -> list[float]:
    """Each candidate's sum of squared distances to its |R| − f − 2 nearest others in R."""
    r = len(candidates)
    neighbours = max(0, min(r - 1, r - f - 2))
    sub = dist[candidates][:, candidates]
    scores = []
    for i in range(r):
        others = torch.cat([sub[i, :i], sub[i, i + 1:]])
        scores.append(float(torch.sort(others).values[:neighbours].sum()))
    return scores


def select(dist: torch.Tensor, candidates: list[int], f: int, m: int) -> list[int]:
    """The m candidates with the lowest Krum scores (stable: ties keep list order)."""
    scores = krum_scores(dist, candidates, f)
    order = sorted(range(len(candidates)), key=lambda i: scores[i])
    return sorted(candidates[i] for i in order[:m])


def krum_requirement(f: int, m: int) -> Requirement:
    if m > 2 * f + 3:
        return Requirement(m, f"at least num_selected = {m}")
    return Requirement(2 * f + 3, f"more than 2f+2 = {2 * f + 2}")


class MultiKrumSelection(_util.InMemory):
    def __init__(self, num_malicious: int, num_selected: int, max_updates: int) -> None:
        if num_malicious < 0 or num_selected < 1:
            raise ValueError("need num_malicious >= 0 and num_selected >= 1")
        super().__init__(max_updates)
        self.f, self.m = num_malicious, num_selected

    def requirement(self) -> Requirement:
        return krum_requirement(self.f, self.m)

    def finish(self, state: State) -> tuple[Aggregate, State]:
        keys, updates, samples, template = self.take()
        chosen = select(squared_distances(updates, template), list(range(len(keys))), self.f, self.m)
        total = sum(samples[i] for i in chosen)
        weights = [samples[i] / total if total > 0 else 1 / len(chosen) for i in chosen]
        delta = _util.weighted_sum([updates[i] for i in chosen], weights, template)
        scores = dict.fromkeys(keys, 0.0)
        scores.update({keys[i]: w for i, w in zip(chosen, weights)})
        return Aggregate(delta, scores, set(keys) - {keys[i] for i in chosen}), state


class MultiKrum(ComposedStrategy):
    name: ClassVar[str] = "multikrum"
    streaming: ClassVar[bool] = False

    def __init__(self, num_malicious: int = 0, num_selected: int = 1, max_updates: int = 64) -> None:
        super().__init__(MultiKrumSelection(num_malicious, num_selected, max_updates), SGD(lr=1.0))


class Krum(MultiKrum):
    name: ClassVar[str] = "krum"

    def __init__(self, num_malicious: int = 0, max_updates: int = 64) -> None:
        super().__init__(num_malicious, 1, max_updates)
