"""Small tensor helpers shared by the strategies (no state, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch

from prime.core.aggregation.base import Aggregator, Contribution, State, StateDict

#: Coordinate-wise rules work on this many coordinates of one tensor at a time, so the
#: (updates × chunk) stack and its sort indices stay small whatever the model size.
CHUNK = 1 << 16


def f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 — *may be ``t`` itself*: never write into the result."""
    return t.to(torch.float32)


def cast_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float32 result in ``like``'s dtype (integer tensors are rounded)."""
    if value.dtype == like.dtype:
        return value
    if not like.dtype.is_floating_point and not like.dtype.is_complex:
        value = value.round()
    return value.to(like.dtype)


def sq_norm(t: torch.Tensor) -> float:
    """Squared L2 norm of one tensor, in float64."""
    return float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2


def global_norm(tensors: dict[str, torch.Tensor]) -> float:
    """L2 norm of all tensors together, summed in sorted-name order in float64."""
    return math.sqrt(sum(sq_norm(tensors[name]) for name in sorted(tensors)))


def scalar(value: float | int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def with_prefix(prefix: str, state: State) -> State:
    return {prefix + key: value for key, value in state.items()}


def under_prefix(prefix: str, state: State) -> State:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def check_keys(state: State, allowed: Callable[[str], bool], who: str) -> None:
    unknown = sorted(key for key in state if not allowed(key))
    if unknown:
        raise ValueError(f"{who}: unknown server-state keys {unknown[:5]}")


def chunks(updates: list[StateDict], name: str, dtype: torch.dtype = torch.float32,
           ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Tensor ``name`` of every update, ``CHUNK`` coordinates at a time: (start, stop,
    the (n, c) stack in ``dtype``). Each tensor is flattened once (a view if contiguous)."""
    flats = [u[name].reshape(-1) for u in updates]
    size = flats[0].numel()
    for start in range(0, size, CHUNK):
        stop = min(size, start + CHUNK)
        yield start, stop, torch.stack([f[start:stop].to(dtype) for f in flats])


def coordinatewise(updates: list[StateDict], template: StateDict,
                   rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                   ) -> tuple[StateDict, torch.Tensor]:
    """Apply ``rule`` to every coordinate of every tensor, chunk by chunk.

    ``rule`` maps an (n, c) stack to the aggregate (c,) and each update's weight summed
    over those c coordinates (n,) float64. Returns the aggregate and each update's
    average weight over all coordinates (its share; sums to 1 when every coordinate's
    weights do).
    """
    weight = torch.zeros(len(updates), dtype=torch.float64)
    coordinates = 0
    out: StateDict = {}
    for name, like in template.items():
        flat = torch.empty(like.numel(), dtype=torch.float32, device=like.device)
        for start, stop, x in chunks(updates, name):
            values, used = rule(x)
            flat[start:stop] = values
            weight += used.to(torch.float64).cpu()
        out[name] = flat.reshape(like.shape)
        coordinates += like.numel()
    return out, weight / max(coordinates, 1)


def row_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows, summed row by row: elementwise, so a coordinate's value does not
    depend on how many columns share the call (``Tensor.mean(0)`` may)."""
    acc = x[0].clone()
    for row in x[1:]:
        acc.add_(row)
    return acc.div_(x.shape[0])


def trimmed(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each column of ``x`` without its ``k`` lowest and ``k`` highest values.

    The sort is stable over the caller's row order (contributor-key order), so values
    and weights do not depend on arrival order. ``k = (n-1)//2`` is the median.
    """
    n = x.shape[0]
    values, order = torch.sort(x, dim=0, stable=True)
    kept = n - 2 * k
    mean = row_mean(values[k:n - k])
    used = torch.bincount(order[k:n - k].reshape(-1), minlength=n).to(torch.float64) / kept
    return mean, used


class InMemory(Aggregator):
    """Base of the robust aggregators: keeps every update of the round (references to
    its tensors, not copies) up to ``max_updates``, and hands them over in
    contributor-key order, so results do not depend on arrival order."""

    streaming: ClassVar[bool] = False

    def __init__(self, max_updates: int) -> None:
        if max_updates < 1:
            raise ValueError("max_updates must be at least 1")
        self.max_updates = max_updates
        self._updates: dict[bytes, StateDict] = {}
        self._samples: dict[bytes, int] = {}
        self._template: StateDict = {}

    def reset(self) -> None:
        self._updates, self._samples, self._template = {}, {}, {}

    def begin(self, template: StateDict, state: State) -> None:
        self.reset()
        self._template = {name: t for name, t in template.items()}

    def add(self, contribution: Contribution) -> None:
        key = contribution.contributor
        self._updates[key] = {name: contribution.delta[name] for name in self._template}
        self._samples[key] = contribution.num_samples

    def take(self) -> tuple[list[bytes], list[StateDict], list[int], StateDict]:
        """The round's keys, updates and sample counts in key order, and the template;
        the aggregator lets go of them."""
        keys = sorted(self._updates)
        round_data = ([self._updates[k] for k in keys], [self._samples[k] for k in keys], self._template)
        self.reset()
        return keys, *round_data


def weighted_sum(updates: list[StateDict], weights: list[float], template: StateDict) -> StateDict:
    """Σ wᵢ·uᵢ in float32, in list order, into fresh tensors."""
    out: StateDict = {}
    for name in template:
        acc = torch.mul(f32(updates[0][name]), weights[0])
        for u, w in zip(updates[1:], weights[1:]):
            acc.add_(f32(u[name]), alpha=w)
        out[name] = acc
    return out


def shares(keys: list[bytes], weight: torch.Tensor) -> dict[bytes, float]:
    return {k: float(w) for k, w in zip(keys, weight.tolist())}
