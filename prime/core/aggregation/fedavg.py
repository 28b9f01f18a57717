"""FedAvg (McMahan et al. 2017): the sample-weighted mean of client updates.

With deltas, ``new = global + Σ n_i·Δ_i / Σ n_i``, accumulated in float32, one update
at a time, in place. What each step costs, per parameter:

- ``begin`` only remembers the global state: no allocation, so a caller may run it
  on an event loop.
- the first ``add`` writes ``n_1·Δ_1`` into fresh accumulators (one pass, no zero-fill);
  each later one is one fused ``acc += n_i·Δ_i``.
- ``finish`` folds ``global + acc / Σ n`` into the accumulators in place (one pass)
  and hands them out as the new state.
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
        self._sum = {}
        self._weights = {}

    def add(self, contribution: Contribution) -> None:
        if self._global is None:
            raise RuntimeError("FedAvg.add before begin")
        if contribution.contributor in self._weights:
            raise ValueError("contributor already added this round")
        weight = float(contribution.num_samples)
        if not self._sum:
            self._sum = {name: torch.mul(contribution.delta[name].to(torch.float32), weight)
                         for name in self._global}
        else:
            for name, acc in self._sum.items():
                acc.add_(contribution.delta[name].to(torch.float32), alpha=weight)
        self._weights[contribution.contributor] = contribution.num_samples

    def finish(self) -> tuple[StateDict, dict[bytes, float]]:
        if self._global is None:
            raise RuntimeError("FedAvg.finish before begin")
        total = sum(self._weights.values())
        if total <= 0:
            new_state, scores = dict(self._global), {}
        else:
            new_state = {}
            for name, acc in self._sum.items():
                base = self._global[name]
                acc.div_(total).add_(base.to(torch.float32))
                new_state[name] = acc if base.dtype == torch.float32 else acc.to(base.dtype)
            scores = {key: n / total for key, n in self._weights.items()}
        self._global, self._sum = None, {}
        return new_state, scores
