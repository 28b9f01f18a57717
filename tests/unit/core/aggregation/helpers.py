"""Plain-torch references for every strategy (float64, loops, no shared code with the
implementations except the documented noise generator), and the contract's cases."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from prime.core.aggregation import (
    Bulyan,
    CenteredClip,
    Contribution,
    DPAdaptiveClipping,
    DPFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    OuterOptimized,
    SGD,
    Strategy,
)
from prime.core.aggregation.dp import noise_generator

Tensors = dict[str, torch.Tensor]
SHAPES = {"w": (2, 3), "b": (3,), "c": (1,)}


def tensors(seed: int, scale: float = 1.0, shift: float = 0.0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=g) * scale + shift for name, shape in SHAPES.items()}


def key(i: int) -> bytes:
    return bytes([i]) * 32


def contributions(round_number: int, n: int = 7) -> list[Contribution]:
    """n updates of varied size and weight; arrival order is not key order."""
    out = [Contribution(key(i), tensors(100 * round_number + i, 0.5 + 0.1 * i, 0.2), 3 + 5 * i)
           for i in range(n)]
    return out[3:] + out[:3]


def run_round(strategy: Strategy, glob: Tensors, contribs: list[Contribution]):  # noqa: ANN201
    strategy.begin(glob)
    for c in contribs:
        strategy.add(c)
    return strategy.finish()


# -- references: the round's aggregate delta Δ̄ (float64) and the shares ----------------

def flat(d: Tensors) -> torch.Tensor:
    return torch.cat([d[name].double().reshape(-1) for name in sorted(d)])


def unflat(v: torch.Tensor, like: Tensors) -> Tensors:
    out, i = {}, 0
    for name in sorted(like):
        size = like[name].numel()
        out[name] = v[i:i + size].reshape(like[name].shape)
        i += size
    return out


def by_key(contribs: list[Contribution]) -> list[Contribution]:
    return sorted(contribs, key=lambda c: c.contributor)


def ref_mean(contribs: list[Contribution], weights: list[float] | None = None) -> tuple[torch.Tensor, list[float]]:
    xs = [flat(c.delta) for c in contribs]
    w = [float(c.num_samples) for c in contribs] if weights is None else weights
    total = sum(w)
    return sum(wi * x for wi, x in zip(w, xs)) / total, [wi / total for wi in w]


def ref_trimmed(contribs: list[Contribution], k: int) -> tuple[torch.Tensor, list[float]]:
    """Per coordinate: sort the n values, average positions k..n-k-1; count who was kept."""
    xs = torch.stack([flat(c.delta) for c in contribs])
    n, p = xs.shape
    out = torch.empty(p, dtype=torch.float64)
    kept = [0.0] * n
    for j in range(p):
        order = sorted(range(n), key=lambda i: float(xs[i, j]))
        middle = order[k:n - k]
        out[j] = sum(float(xs[i, j]) for i in middle) / len(middle)
        for i in middle:
            kept[i] += 1 / (len(middle) * p)
    return out, kept


def ref_median(contribs: list[Contribution]) -> tuple[torch.Tensor, list[float]]:
    values, shares = ref_trimmed(contribs, (len(contribs) - 1) // 2)
    xs = np.stack([flat(c.delta).numpy() for c in contribs])
    assert np.allclose(values.numpy(), np.median(xs, axis=0))
    return values, shares


def krum_select(xs: list[torch.Tensor], f: int, m: int) -> list[int]:
    n = len(xs)
    k = max(0, min(n - 1, n - f - 2))
    scores = []
    for i in range(n):
        d = sorted(float(((xs[i] - xs[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[:k]))
    return sorted(sorted(range(n), key=lambda i: scores[i])[:m])


def ref_multikrum(contribs: list[Contribution], f: int, m: int) -> tuple[torch.Tensor, list[float]]:
    xs = [flat(c.delta) for c in contribs]
    chosen = krum_select(xs, f, m)
    mean, w = ref_mean([contribs[i] for i in chosen])
    shares = [0.0] * len(contribs)
    for i, wi in zip(chosen, w):
        shares[i] = wi
    return mean, shares


def ref_bulyan(contribs: list[Contribution], f: int) -> tuple[torch.Tensor, list[float]]:
    xs = [flat(c.delta) for c in contribs]
    remaining, picked = list(range(len(xs))), []
    while len(picked) < len(xs) - 2 * f:
        (j,) = krum_select([xs[i] for i in remaining], f, 1)
        picked.append(remaining.pop(j))
    picked.sort()
    beta = len(picked) - 2 * f
    sel = torch.stack([xs[i] for i in picked])
    med = torch.from_numpy(np.median(sel.numpy(), axis=0))
    p = sel.shape[1]
    out = torch.empty(p, dtype=torch.float64)
    shares = [0.0] * len(xs)
    for j in range(p):
        near = sorted(range(len(picked)), key=lambda i: abs(float(sel[i, j] - med[j])))[:beta]
        out[j] = sum(float(sel[i, j]) for i in near) / beta
        for i in near:
            shares[picked[i]] += 1 / (beta * p)
    return out, shares


def ref_centeredclip(contribs: list[Contribution], tau: float, iterations: int,
                     v0: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    xs = [flat(c.delta) for c in contribs]
    v = v0.clone()
    for _ in range(iterations):
        c = [min(1.0, tau / float((x - v).norm())) for x in xs]
        v = v + sum(ci * (x - v) for ci, x in zip(c, xs)) / len(xs)
    return v, [ci / sum(c) for ci in c]


# -- reference server optimizers on Δ̄ (float64) ------------------------------------------

@dataclass
class RefOptimizer:
    kind: str  # sgd | adam | yogi | adagrad
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    bias_correction: bool = False
    state: dict = field(default_factory=dict)

    def step(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        s = self.state
        s["t"] = s.get("t", 0) + 1
        if self.kind == "sgd":
            if self.momentum == 0:
                return x + self.lr * d
            s["b"] = d.clone() if "b" not in s else self.momentum * s["b"] + d
            direction = d + self.momentum * s["b"] if self.nesterov else s["b"]
            return x + self.lr * direction
        m = s.get("m", torch.zeros_like(d))
        v = s.get("v", torch.zeros_like(d))
        m = self.beta_1 * m + (1 - self.beta_1) * d
        if self.kind == "adam":
            v = self.beta_2 * v + (1 - self.beta_2) * d ** 2
        elif self.kind == "yogi":
            v = v - (1 - self.beta_2) * d ** 2 * torch.sign(v - d ** 2)
        else:
            v = v + d ** 2
        s["m"], s["v"] = m, v
        eta = self.lr
        if self.bias_correction:
            eta *= math.sqrt(1 - self.beta_2 ** s["t"]) / (1 - self.beta_1 ** s["t"])
        return x + eta * m / (v.sqrt() + self.tau)


# -- the cases ---------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    make: Callable[[], Strategy]
    aggregate: Callable[[list[Contribution], dict], tuple[torch.Tensor, list[float]]]
    optimizer: Callable[[], RefOptimizer]
    dp: dict | None = None  # clipping, clip_norm, noise_multiplier, seed, ...


def sgd(lr: float = 1.0, momentum: float = 0.0, nesterov: bool = False) -> Callable[[], RefOptimizer]:
    return lambda: RefOptimizer("sgd", lr=lr, momentum=momentum, nesterov=nesterov)


def mean_agg(contribs, memo):  # noqa: ANN001, ANN201
    return ref_mean(contribs, memo.get("weights"))


def clip_v0(memo: dict, p: int) -> torch.Tensor:
    return memo.setdefault("previous", torch.zeros(p, dtype=torch.float64))


def cc_previous(tau: float, iterations: int):  # noqa: ANN201
    def agg(contribs, memo):  # noqa: ANN001, ANN202
        v, s = ref_centeredclip(contribs, tau, iterations, clip_v0(memo, flat(contribs[0].delta).numel()))
        memo["previous"] = v
        return v, s
    return agg


def cc_median(tau: float, iterations: int):  # noqa: ANN201
    return lambda contribs, memo: ref_centeredclip(contribs, tau, iterations, ref_median(contribs)[0])


BASE_CASES = [
    Case("fedavg", FedAvg, mean_agg, sgd()),
    Case("fedprox", lambda: FedProx(0.1), mean_agg, sgd()),
    Case("fedavgm", lambda: FedAvgM(1.0, 0.9), mean_agg, sgd(1.0, 0.9)),
    Case("fedavgm-nesterov", lambda: FedAvgM(0.7, 0.9, nesterov=True), mean_agg, sgd(0.7, 0.9, True)),
    Case("fedadam", lambda: FedAdam(0.1, 0.9, 0.99, 1e-3), mean_agg, lambda: RefOptimizer("adam", lr=0.1)),
    Case("fedadam-bc", lambda: FedAdam(0.05, 0.8, 0.9, 1e-2, bias_correction=True), mean_agg,
         lambda: RefOptimizer("adam", lr=0.05, beta_1=0.8, beta_2=0.9, tau=1e-2, bias_correction=True)),
    Case("fedyogi", lambda: FedYogi(0.01, 0.9, 0.99, 1e-3), mean_agg, lambda: RefOptimizer("yogi", lr=0.01)),
    Case("fedadagrad", lambda: FedAdagrad(0.1, 0.0, 1e-3), mean_agg,
         lambda: RefOptimizer("adagrad", lr=0.1, beta_1=0.0)),
    Case("fedadagrad-m", lambda: FedAdagrad(0.1, 0.5, 1e-3), mean_agg,
         lambda: RefOptimizer("adagrad", lr=0.1, beta_1=0.5)),
    Case("fedmedian", FedMedian, lambda c, memo: ref_median(c), sgd()),
    Case("fedmedian-even", FedMedian, lambda c, memo: ref_median(c), sgd()),  # run with 6 updates
    Case("fedtrimmedavg", lambda: FedTrimmedAvg(0.2), lambda c, memo: ref_trimmed(c, int(0.2 * len(c))), sgd()),
    Case("krum", lambda: Krum(1), lambda c, memo: ref_multikrum(c, 1, 1), sgd()),
    Case("multikrum", lambda: MultiKrum(1, 3), lambda c, memo: ref_multikrum(c, 1, 3), sgd()),
    Case("bulyan", lambda: Bulyan(1), lambda c, memo: ref_bulyan(c, 1), sgd()),
    Case("centeredclip", lambda: CenteredClip(0.8, 3), cc_previous(0.8, 3), sgd()),
    Case("centeredclip-median", lambda: CenteredClip(0.8, 2, "median"), cc_median(0.8, 2), sgd()),
]
_BY_ID = {c.id: c for c in BASE_CASES}


def dp_case(inner: str, **dp: object) -> Case:
    base = _BY_ID[inner]
    clipping = dp["clipping"]
    kwargs = {k: v for k, v in dp.items() if k != "clipping"}
    wrapper = DPFixedClipping if clipping == "fixed" else DPAdaptiveClipping
    return Case(f"dp-{clipping}-{inner}", lambda: wrapper(base.make(), **kwargs), base.aggregate,
                base.optimizer, dict(dp))


def outer_case(inner: str, lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True) -> Case:
    """``inner``'s aggregator, then an outer SGD (DiLoCo's defaults)."""
    base = _BY_ID[inner]
    return Case(f"{inner}+outer", lambda: OuterOptimized(base.make(), SGD(lr, momentum, nesterov)), base.aggregate,
                sgd(lr, momentum, nesterov))


OUTER_CASES = [outer_case("fedavg"), outer_case("fedtrimmedavg"), outer_case("fedmedian"), outer_case("krum"),
               outer_case("centeredclip"), outer_case("bulyan", 0.5, 0.5, False)]
_BY_ID.update({c.id: c for c in OUTER_CASES})

CASES = BASE_CASES + OUTER_CASES + [
    dp_case("fedtrimmedavg+outer", clipping="fixed", clip_norm=1.5, noise_multiplier=0.3, seed=16),
    dp_case("fedavg", clipping="fixed", clip_norm=1.5, noise_multiplier=0.3, seed=11),
    dp_case("fedadam", clipping="fixed", clip_norm=1.5, noise_multiplier=0.3, seed=12),
    dp_case("fedmedian", clipping="fixed", clip_norm=1.5, noise_multiplier=0.3, seed=13),
    dp_case("fedavg", clipping="adaptive", clip_norm=1.5, noise_multiplier=0.2, clipped_count_stddev=0.5, seed=14),
    dp_case("krum", clipping="adaptive", clip_norm=1.5, noise_multiplier=0.0, seed=15),
]

def n_updates(case: Case) -> int:
    return 6 if case.id == "fedmedian-even" else 7


class Reference:
    """A case's reference, round after round (it keeps its own server state)."""

    def __init__(self, case: Case) -> None:
        self.case, self.opt, self.memo = case, case.optimizer(), {}
        self.round, self.clip = 0, None if case.dp is None else float(case.dp["clip_norm"])

    def finish(self, glob: Tensors, contribs: list[Contribution]) -> tuple[Tensors, dict[bytes, float]]:
        contribs = by_key(contribs)
        dp = self.case.dp
        if dp is not None:
            clipped, unclipped = [], 0
            for c in contribs:
                norm = float(flat(c.delta).norm())
                scale = min(1.0, self.clip / norm)
                unclipped += norm <= self.clip
                clipped.append(Contribution(c.contributor, {k: v.double() * scale for k, v in c.delta.items()}, 1))
            contribs = clipped
        delta, shares = self.case.aggregate(contribs, self.memo)
        if dp is not None:
            n, z = len(contribs), float(dp["noise_multiplier"])
            gen = noise_generator(int(dp["seed"]), self.round)
            if dp["clipping"] == "adaptive":
                sigma_b = float(dp.get("clipped_count_stddev") or (n / 20 if z > 0 else 0.0))
                count = unclipped + float(torch.randn((), generator=gen, dtype=torch.float64)) * sigma_b
                new_clip = self.clip * math.exp(-0.2 * (count / n - 0.5))
                z = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5 if z > 0 else 0.0
            std = z * self.clip / n
            noise = {name: torch.randn(SHAPES[name], generator=gen, dtype=torch.float32).double() * std
                     for name in sorted(SHAPES)}
            delta = delta + flat(noise)
            if dp["clipping"] == "adaptive":
                self.clip = new_clip
            self.round += 1
        new = unflat(self.opt.step(flat(glob), delta), glob)
        return new, {c.contributor: s for c, s in zip(contribs, shares)}
