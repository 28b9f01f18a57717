"""CenteredClip (Karimireddy, He & Jaggi 2021, "Learning from History for Byzantine
Robust Optimization").

Starting from v₀, iterate L times: ``v ← v + (1/n)·Σᵢ cᵢ·(Δᵢ − v)`` with
``cᵢ = min(1, τ / ‖Δᵢ − v‖)``: each update pulls v by at most τ/n, so one huge outlier
moves the aggregate by at most τ/n per iteration. v₀ is the previous round's aggregate
(``init = "previous"``, the paper's choice; zero in the first round, kept in the server
state) or the coordinate-wise median of the round (``init = "median"``, stateless).
Unweighted (sample counts ignored); sums in contributor-key order. Applied as is.

Memory: in memory — every update of the round is held (references, up to
``max_updates``); L passes of 2 reads over each; plus one float32 tensor per parameter
of server state with ``init = "previous"``. Score: the update's clip weight cᵢ in the
last iteration over Σ cⱼ (equal shares when nothing was clipped); nobody is dropped.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, State, StateDict
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.optimizers import SGD

Init = Literal["previous", "median"]


class CenteredClipRule(_util.InMemory):
    buffer_prefixes: ClassVar[tuple[str, ...]] = ("previous.",)

    def __init__(self, tau: float, iterations: int, init: Init, max_updates: int) -> None:
        if tau <= 0 or iterations < 1 or init not in ("previous", "median"):
            raise ValueError("need tau > 0, iterations >= 1, init 'previous' or 'median'")
        super().__init__(max_updates)
        self.tau, self.iterations, self.init = tau, iterations, init

    def _start(self, state: State, updates: list[StateDict], template: StateDict) -> StateDict:
        if self.init == "median":
            k = (len(updates) - 1) // 2
            return _util.coordinatewise(updates, template, lambda x: _util.trimmed(x, k))[0]
        previous = _util.under_prefix("previous.", state)
        return {name: previous[name].to(torch.float32, copy=True) if name in previous
                else torch.zeros(like.shape, dtype=torch.float32, device=like.device)
                for name, like in template.items()}

    def finish(self, state: State) -> tuple[Aggregate, State]:
        keys, updates, _, template = self.take()
        n = len(updates)
        v = self._start(state, updates, template)
        clip = [1.0] * n
        for _ in range(self.iterations):
            for i, u in enumerate(updates):
                norm = math.sqrt(sum(_util.sq_norm(_util.f32(u[name]) - v[name]) for name in sorted(template)))
                clip[i] = min(1.0, self.tau / norm) if norm > 0 else 1.0
            moved: StateDict = {}
            for name, centre in v.items():
                acc = torch.zeros_like(centre)
                for u, c in zip(updates, clip):
                    acc.add_(_util.f32(u[name]) - centre, alpha=c)
                moved[name] = acc.div_(n).add_(centre)
            v = moved
        total = sum(clip)
        scores = {k: c / total for k, c in zip(keys, clip)}
        new_state = dict(state)
        if self.init == "previous":
            new_state = _util.with_prefix("previous.", {name: t.clone() for name, t in v.items()})
        return Aggregate(v, scores, set()), new_state


class CenteredClip(ComposedStrategy):
    name: ClassVar[str] = "centeredclip"
    streaming: ClassVar[bool] = False

    def __init__(self, tau: float = 1.0, iterations: int = 3, init: Init = "previous",
                 max_updates: int = 64) -> None:
        super().__init__(CenteredClipRule(tau, iterations, init, max_updates), SGD(lr=1.0))
