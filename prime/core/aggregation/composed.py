"""``ComposedStrategy``: an aggregator followed by a server optimizer.

``begin`` only remembers the global state (no allocation). ``add`` checks the
contribution (round open, no duplicate, ``max_updates`` cap, names and shapes) before
the aggregator reads a single value. ``finish`` asks the aggregator for the round's
aggregate delta, lets the optimizer apply it, casts the new state back to each global
tensor's dtype, and only then adopts both parts' new server state. A round with no
update returns the global state unchanged and leaves the server state alone.

Server state (``state_dict``) is ``strategy`` (the name, as uint8 bytes, so state of
another strategy is refused), ``aggregator.*`` and ``optimizer.*``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import (
    Aggregator,
    Contribution,
    Requirement,
    RoundResult,
    ServerOptimizer,
    State,
    StateDict,
    Strategy,
)


def _name_tensor(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode()), dtype=torch.uint8)


class ComposedStrategy(Strategy):
    name: ClassVar[str] = "composed"

    def __init__(self, aggregator: Aggregator, optimizer: ServerOptimizer) -> None:
        self.aggregator = aggregator
        self.optimizer = optimizer
        self._agg_state: State = aggregator.initial_state()
        self._opt_state: State = optimizer.initial_state()
        self._global: StateDict | None = None
        self._added: dict[bytes, int] = {}

    @property  # type: ignore[misc]  # ClassVar on the named strategies, derived here
    def streaming(self) -> bool:  # type: ignore[override]
        return self.aggregator.streaming

    @property
    def label(self) -> str:
        """The name in messages and in the server state (wrappers include the inner one)."""
        return self.name

    @property
    def max_updates(self) -> int | None:
        return self.aggregator.max_updates

    def requirement(self) -> Requirement:
        return self.aggregator.requirement()

    # -- the round -----------------------------------------------------------------

    def begin(self, global_state: StateDict) -> None:
        self.aggregator.reset()
        self._global = global_state
        self._added = {}
        self.aggregator.begin(global_state, self._agg_state)

    def add(self, contribution: Contribution) -> None:
        if self._global is None:
            raise RuntimeError(f"{self.label}.add before begin")
        key = contribution.contributor
        if key in self._added:
            raise ValueError("contributor already added this round")
        cap = self.aggregator.max_updates
        if cap is not None and len(self._added) >= cap:
            raise ValueError(f"{self.label} holds at most max_updates = {cap} updates per round; "
                             "raise max_updates or select fewer trainers")
        if contribution.num_samples < 0:
            raise ValueError("num_samples must be non-negative")
        delta = contribution.delta
        if delta.keys() != self._global.keys():
            raise ValueError("update tensor names differ from the global model's")
        shapes = getattr(delta, "shapes", None)  # an encoded update (prime.codecs) knows them without decoding
        for name, like in self._global.items():
            shape = shapes[name] if shapes is not None else delta[name].shape
            if shape != like.shape:
                raise ValueError(f"update tensor {name!r} has shape {tuple(shape)}, "
                                 f"the global model {tuple(like.shape)}")
        self.aggregator.add(contribution)
        self._added[key] = contribution.num_samples

    def finish(self) -> RoundResult:
        if self._global is None:
            raise RuntimeError(f"{self.label}.finish before begin")
        glob = self._global
        if not self._added:
            self.aggregator.reset()
            self._global = None
            return RoundResult(dict(glob), {}, set())
        need = self.requirement()
        if len(self._added) < need.minimum:
            raise ValueError(f"{self.label} needs {need.rule} updates per round; got {len(self._added)}")
        aggregate, agg_state = self.aggregator.finish(self._agg_state)
        if aggregate.delta is None:  # nothing to apply: the server state stays as it is
            new_state, agg_state, opt_state = dict(glob), self._agg_state, self._opt_state
        else:
            params = {name: _util.f32(t) for name, t in glob.items()}
            new_params, opt_state = self.optimizer.step(self._opt_state, params, aggregate.delta, owned=True)
            new_state = {name: _util.cast_like(new_params[name], like) for name, like in glob.items()}
        scores = {key: float(aggregate.scores.get(key, 0.0)) for key in self._added}
        for key in aggregate.dropped:
            scores[key] = 0.0
        dropped = {key for key, score in scores.items() if score == 0.0}
        # Nothing can fail past this point: adopt the new server state.
        self._agg_state, self._opt_state = agg_state, opt_state
        self._global, self._added = None, {}
        return RoundResult(new_state, scores, dropped)

    # -- server state --------------------------------------------------------------

    def state_dict(self) -> State:
        state = {"strategy": _name_tensor(self.label)}
        state.update(_util.with_prefix("aggregator.", self._agg_state))
        state.update(_util.with_prefix("optimizer.", self._opt_state))
        return state

    def load_state_dict(self, state: State) -> None:
        name = state.get("strategy")
        if name is None or bytes(name.tolist()).decode(errors="replace") != self.label:
            found = "none" if name is None else bytes(name.tolist()).decode(errors="replace")
            raise ValueError(f"server state is for strategy {found!r}, not {self.label!r}")
        _util.check_keys(state, lambda k: k == "strategy" or k.startswith(("aggregator.", "optimizer.")),
                         self.label)
        agg = {k: v.detach().clone() for k, v in _util.under_prefix("aggregator.", state).items()}
        opt = {k: v.detach().clone() for k, v in _util.under_prefix("optimizer.", state).items()}
        _util.check_keys(agg, self.aggregator.owns, self.label)
        _util.check_keys(opt, self.optimizer.owns, self.label)
        self.aggregator.reset()
        self._global, self._added = None, {}
        self._agg_state = {**self.aggregator.initial_state(), **agg}
        self._opt_state = {**self.optimizer.initial_state(), **opt}
