"""Server optimizers: how the round's aggregate delta Δ moves the global model x.

Written on Δ (the sign of an update), which is exactly ``torch.optim`` run on the
pseudo-gradient g = −Δ (negation is exact in floating point):

- :class:`SGD` — ``x + lr·Δ`` (FedAvg at lr 1); with momentum μ, heavy ball as
  ``torch.optim.SGD`` (buffer b₁ = Δ₁, bₜ = μ·bₜ₋₁ + Δₜ, ``x + lr·b``; FedAvgM,
  Hsu et al. 2019); with ``nesterov``, ``x + lr·(Δ + μ·b)`` (DiLoCo's outer step).
- :class:`Adam`, :class:`Yogi`, :class:`Adagrad` — Reddi et al. 2021, Algorithm 2:
  mₜ = β₁mₜ₋₁ + (1−β₁)Δ; vₜ = β₂vₜ₋₁ + (1−β₂)Δ² (Adam), vₜ₋₁ − (1−β₂)Δ²·sign(vₜ₋₁ − Δ²)
  (Yogi), vₜ₋₁ + Δ² (Adagrad); x + η·mₜ/(√vₜ + τ); m₋₁ = v₋₁ = 0 as Flower does.

Memory: the state holds one float32 buffer per parameter for momentum, two for the
adaptive ones (one when β₁ = 0); a step allocates the new buffers before dropping the
old, so the returned state is never written again.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import ServerOptimizer, State, StateDict


def _step_count(state: State) -> int:
    return int(state["step"])


class SGD(ServerOptimizer):
    buffer_prefixes: ClassVar[tuple[str, ...]] = ("momentum.",)

    def __init__(self, lr: float = 1.0, momentum: float = 0.0, nesterov: bool = False) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError("SGD needs lr > 0 and momentum in [0, 1)")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov

    def initial_state(self) -> State:
        return {"step": _util.scalar(0, torch.int64)}

    def step(self, state: State, params: StateDict, delta: StateDict,
             owned: bool) -> tuple[StateDict, State]:
        new_state: State = {"step": _util.scalar(_step_count(state) + 1, torch.int64)}
        direction = delta
        if self.momentum > 0:
            old = _util.under_prefix("momentum.", state)
            buf = {name: d.clone() if name not in old else torch.mul(old[name], self.momentum).add_(d)
                   for name, d in delta.items()}
            new_state.update(_util.with_prefix("momentum.", buf))
            direction = ({name: d.add(buf[name], alpha=self.momentum) for name, d in delta.items()}
                         if self.nesterov else buf)
        if self.lr == 1.0 and owned and direction is delta:
            return {name: d.add_(params[name]) for name, d in delta.items()}, new_state
        return {name: torch.add(params[name], direction[name], alpha=self.lr) for name in delta}, new_state


class _Adaptive(ServerOptimizer):
    buffer_prefixes: ClassVar[tuple[str, ...]] = ("m.", "v.")

    def __init__(self, eta: float, beta_1: float, beta_2: float, tau: float) -> None:
        if eta <= 0 or tau <= 0 or not 0 <= beta_1 < 1 or not 0 <= beta_2 < 1:
            raise ValueError("need eta > 0, tau > 0, beta_1 and beta_2 in [0, 1)")
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau

    def initial_state(self) -> State:
        return {"step": _util.scalar(0, torch.int64)}

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _lr(self, t: int) -> float:
        return self.eta

    def step(self, state: State, params: StateDict, delta: StateDict,
             owned: bool) -> tuple[StateDict, State]:
        t = _step_count(state) + 1
        m_old, v_old = _util.under_prefix("m.", state), _util.under_prefix("v.", state)
        m: StateDict = {}
        v: StateDict = {}
        new: StateDict = {}
        lr = self._lr(t)
        for name, d in delta.items():
            if self.beta_1 == 0:
                m_t = d
            elif name in m_old:
                m_t = torch.mul(m_old[name], self.beta_1).add_(d, alpha=1 - self.beta_1)
            else:
                m_t = torch.mul(d, 1 - self.beta_1)
            prev = v_old[name] if name in v_old else torch.zeros_like(d)
            v[name] = v_t = self._second_moment(prev, d * d)
            new[name] = torch.addcdiv(params[name], m_t, v_t.sqrt().add_(self.tau), value=lr)
            if self.beta_1 != 0:
                m[name] = m_t
        out: State = {"step": _util.scalar(t, torch.int64)}
        out.update(_util.with_prefix("m.", m))
        out.update(_util.with_prefix("v.", v))
        return new, out


class Adam(_Adaptive):
    """FedAdam's server step; ``bias_correction`` scales η by √(1−β₂ᵗ)/(1−β₁ᵗ)
    (Kingma & Ba; t counts server steps from 1 — Flower uses the round number + 1)."""

    def __init__(self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3, bias_correction: bool = False) -> None:
        super().__init__(eta, beta_1, beta_2, tau)
        self.bias_correction = bias_correction

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return torch.mul(v, self.beta_2).add_(d2, alpha=1 - self.beta_2)

    def _lr(self, t: int) -> float:
        if not self.bias_correction:
            return self.eta
        return self.eta * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)


class Yogi(_Adaptive):
    def __init__(self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3) -> None:
        super().__init__(eta, beta_1, beta_2, tau)

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta_2) * d2 * torch.sign(v - d2)


class Adagrad(_Adaptive):
    def __init__(self, eta: float = 0.1, beta_1: float = 0.0, tau: float = 1e-3) -> None:
        super().__init__(eta, beta_1, 0.0, tau)

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v + d2
