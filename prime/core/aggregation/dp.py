"""Central differential privacy around any strategy: clip each update, noise the aggregate.

Each added update is scaled to L2 norm at most C (``min(1, C/‖Δᵢ‖)``, all tensors
together) and handed to the wrapped strategy's aggregator *with weight 1*; the round's
aggregate then gets N(0, σ²) per coordinate, σ = z·C/n, before the wrapped strategy's
server optimizer applies it (so DP-FedAdam noises the pseudo-gradient, not the
weights). z·C/n is the sensitivity of the uniform mean of n clipped updates, hence the
weight 1: a sample-weighted mean would need max-share·C. For the robust aggregators
the same noise is added, but it is calibrated for the mean, not proven for them.

- :class:`DPFixedClipping` — C fixed (McMahan et al. 2018; Flower's server-side
  fixed clipping).
- :class:`DPAdaptiveClipping` — Andrew et al. 2021: with bᵢ = 1[‖Δᵢ‖ ≤ C] and
  b̃ = (Σbᵢ + N(0, σ_b²))/n, after the round C ← C·exp(−η_C·(b̃ − γ)), so C tracks the
  γ-quantile of update norms; the update noise uses z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so
  the pair (updates, count) has noise multiplier z. σ_b defaults to n/20 (needs
  n > 10z; 0 when z = 0, as Flower); the round's noise uses the C it clipped with
  (Flower uses the updated one).

Noise comes from a generator seeded by SHA-256(seed, round); the round (and ``clip_norm``
for adaptive) is server state, the seed is not: anyone who knows the seed can subtract the
noise, and server state is mirrored to the standby through the blob service. The
coordinator derives the seed from its own key (``prime/coordinator/driver.py``), so the
primary and its standby draw the same noise and nobody else can; without any seed a random
one is drawn per process (not restart-safe).

Memory: what the wrapped strategy holds; streaming ones stay streaming (a clipped
update is one scaled float32 copy, folded in and dropped; an in-memory aggregator
keeps the clipped copies). Scores: the wrapped aggregator's, under weight 1.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import ClassVar, Literal

import torch

from prime.core.aggregation import _util
from prime.core.aggregation.base import Aggregate, Aggregator, Contribution, Requirement, State, StateDict
from prime.core.aggregation.composed import ComposedStrategy


def noise_generator(seed: int, round_number: int) -> torch.Generator:
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True)
                            + round_number.to_bytes(8, "little", signed=True)).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class DPClipping(Aggregator):
    """Clips updates on their way into ``inner`` and noises what comes out."""

    def __init__(self, inner: Aggregator, clipping: Literal["fixed", "adaptive"], clip_norm: float,
                 noise_multiplier: float, seed: int | None = None, target_quantile: float = 0.5,
                 clip_learning_rate: float = 0.2, clipped_count_stddev: float | None = None) -> None:
        if clipping not in ("fixed", "adaptive"):
            raise ValueError("clipping must be 'fixed' or 'adaptive'")
        if clip_norm <= 0 or noise_multiplier < 0:
            raise ValueError("need clip_norm > 0 and noise_multiplier >= 0")
        if not 0 <= target_quantile <= 1 or clip_learning_rate <= 0:
            raise ValueError("need target_quantile in [0, 1] and clip_learning_rate > 0")
        if clipped_count_stddev is not None and 0 < noise_multiplier >= 2 * clipped_count_stddev:
            raise ValueError("adaptive clipping needs noise_multiplier < 2·clipped_count_stddev")
        self.inner, self.clipping = inner, clipping
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self.seed = secrets.randbits(63) if seed is None else seed
        self.target_quantile, self.clip_learning_rate = target_quantile, clip_learning_rate
        self.clipped_count_stddev = clipped_count_stddev
        self.max_updates = inner.max_updates
        self._clip, self._unclipped, self._count = clip_norm, 0, 0

    @property  # type: ignore[misc]
    def streaming(self) -> bool:  # type: ignore[override]
        return self.inner.streaming

    def requirement(self) -> Requirement:
        need = self.inner.requirement()
        if self.clipping == "adaptive" and self.noise_multiplier > 0 and self.clipped_count_stddev is None:
            floor = math.floor(10 * self.noise_multiplier) + 1
            if floor > need.minimum:
                return Requirement(floor, f"more than 10·dp.noise_multiplier = {10 * self.noise_multiplier:g} "
                                          "(dp.clipped_count_stddev defaults to n/20 and must exceed "
                                          "noise_multiplier/2)")
        return need

    def initial_state(self) -> State:
        state = {"round": _util.scalar(0, torch.int64)}
        if self.clipping == "adaptive":
            state["clip_norm"] = _util.scalar(self.clip_norm, torch.float64)
        state.update(_util.with_prefix("inner.", self.inner.initial_state()))
        return state

    def owns(self, key: str) -> bool:
        if key.startswith("inner."):
            return self.inner.owns(key[len("inner."):])
        return key in self.initial_state()

    def reset(self) -> None:
        self.inner.reset()
        self._unclipped, self._count = 0, 0

    def begin(self, template: StateDict, state: State) -> None:
        self.reset()
        self._clip = float(state["clip_norm"]) if self.clipping == "adaptive" else self.clip_norm
        self.inner.begin(template, _util.under_prefix("inner.", state))

    def add(self, contribution: Contribution) -> None:
        norm = _util.global_norm(contribution.delta)
        delta = contribution.delta
        if norm > self._clip:
            scale = self._clip / norm
            delta = {name: torch.mul(_util.f32(t), scale) for name, t in delta.items()}
        else:
            self._unclipped += 1
        self.inner.add(Contribution(contribution.contributor, delta, 1))
        self._count += 1

    def finish(self, state: State) -> tuple[Aggregate, State]:
        n, unclipped, clip = self._count, self._unclipped, self._clip
        z = self.noise_multiplier
        sigma_b = self.clipped_count_stddev
        if sigma_b is None:
            sigma_b = n / 20 if z > 0 else 0.0
        adaptive = self.clipping == "adaptive"
        if adaptive and z > 0 and z >= 2 * sigma_b:
            raise ValueError(f"adaptive clipping with dp.noise_multiplier = {z:g} needs more than "
                             f"{10 * z:g} updates per round (clipped_count_stddev n/20); got {n}")
        aggregate, inner_state = self.inner.finish(_util.under_prefix("inner.", state))
        round_number = int(state["round"])
        gen = noise_generator(self.seed, round_number)
        new_state = {"round": _util.scalar(round_number + 1, torch.int64)}
        if adaptive:
            count_noise = float(torch.randn((), generator=gen, dtype=torch.float64)) * sigma_b
            fraction = (unclipped + count_noise) / n
            new_clip = clip * math.exp(-self.clip_learning_rate * (fraction - self.target_quantile))
            new_state["clip_norm"] = _util.scalar(new_clip, torch.float64)
            z = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5 if z > 0 else 0.0
        std = z * clip / n
        if aggregate.delta is not None and std > 0:
            for name in sorted(aggregate.delta):
                t = aggregate.delta[name]
                t.add_(torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device), alpha=std)
        new_state.update(_util.with_prefix("inner.", inner_state))
        return aggregate, new_state


class _DPStrategy(ComposedStrategy):
    def __init__(self, strategy: ComposedStrategy, aggregator: DPClipping) -> None:
        if not isinstance(strategy, ComposedStrategy):
            raise TypeError("DP wraps one of prime's composed strategies")
        super().__init__(aggregator, strategy.optimizer)
        self.inner, self.proximal_mu = strategy, strategy.proximal_mu

    @property
    def label(self) -> str:
        return f"{self.name}({self.inner.label})"


class DPFixedClipping(_DPStrategy):
    """``strategy`` with every update clipped to ``clip_norm`` and noise z·C/n added."""

    name: ClassVar[str] = "dp-fixed"

    def __init__(self, strategy: ComposedStrategy, clip_norm: float, noise_multiplier: float,
                 seed: int | None = None) -> None:
        super().__init__(strategy, DPClipping(strategy.aggregator, "fixed", clip_norm, noise_multiplier, seed))


class DPAdaptiveClipping(_DPStrategy):
    """``strategy`` with Andrew et al.'s adaptive clip norm (starting at ``clip_norm``)."""

    name: ClassVar[str] = "dp-adaptive"

    def __init__(self, strategy: ComposedStrategy, clip_norm: float, noise_multiplier: float,
                 target_quantile: float = 0.5, clip_learning_rate: float = 0.2,
                 clipped_count_stddev: float | None = None, seed: int | None = None) -> None:
        super().__init__(strategy, DPClipping(strategy.aggregator, "adaptive", clip_norm, noise_multiplier,
                                              seed, target_quantile, clip_learning_rate, clipped_count_stddev))
