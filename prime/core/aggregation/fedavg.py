"""FedAvg (McMahan et al. 2017): the sample-weighted mean of client updates.

With deltas, ``new = global + Σ n_i·Δ_i / Σ n_i``. Accumulated in float64-free
in-place adds, one update at a time.
"""

from __future__ import annotations

import torch

from prime.core.aggregation.base import Contribution, StateDict, Strategy


class FedAvg(Strategy):
    def __init__(self) -> None:
        self._global: StateDict | None = None
        self._sum: StateDict = {}
        self._weights: dict[bytes, int] = {}

    def begin(self, global_state: StateDict) -> None:
        self._global = global_state
        self._sum = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}
        self._weights = {}

    def add(self, contribution: Contribution) -> None:
        if self._global is None:
            raise RuntimeError("FedAvg.add before begin")
        if contribution.contributor in self._weights:
            raise ValueError("contributor already added this round")
        weight = float(contribution.num_samples)
        for name, acc in self._sum.items():
            acc.add_(contribution.delta[name].to(torch.float32), alpha=weight)
        self._weights[contribution.contributor] = contribution.num_samples

    def finish(self) -> tuple[StateDict, dict[bytes, float]]:
        if self._global is None:
            raise RuntimeError("FedAvg.finish before begin")
        total = sum(self._weights.values())
        if total <= 0:
            return dict(self._global), {}
        new_state = {
            name: (self._global[name].to(torch.float32) + acc / total).to(self._global[name].dtype)
            for name, acc in self._sum.items()
        }
        scores = {key: n / total for key, n in self._weights.items()}
        self._global, self._sum = None, {}
        return new_state, scores
