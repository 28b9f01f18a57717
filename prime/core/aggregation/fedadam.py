"""FedAdam (Reddi et al. 2021): FedAvg's weighted mean Δ̄, applied by server Adam.

mₜ = β₁mₜ₋₁ + (1−β₁)Δ̄, vₜ = β₂vₜ₋₁ + (1−β₂)Δ̄², ``new = global + η·mₜ/(√vₜ + τ)``
(optionally bias-corrected η, see :class:`~prime.core.aggregation.optimizers.Adam`).

Memory: streaming (one accumulator per parameter during a round) plus m and v
(two float32 tensors per parameter) in the server state. Score: nᵢ / Σn.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.fedavg import WeightedMean
from prime.core.aggregation.optimizers import Adam


class FedAdam(ComposedStrategy):
    name: ClassVar[str] = "fedadam"
    streaming: ClassVar[bool] = True

    def __init__(self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3, bias_correction: bool = False) -> None:
        super().__init__(WeightedMean(), Adam(eta, beta_1, beta_2, tau, bias_correction))
