"""FedYogi (Reddi et al. 2021): FedAvg's weighted mean Δ̄, applied by server Yogi.

mₜ = β₁mₜ₋₁ + (1−β₁)Δ̄, vₜ = vₜ₋₁ − (1−β₂)Δ̄²·sign(vₜ₋₁ − Δ̄²),
``new = global + η·mₜ/(√vₜ + τ)``: like Adam, but v grows or shrinks additively, so it
forgets a burst of large updates more slowly.

Memory: streaming plus m and v (two float32 tensors per parameter) in the server
state. Score: nᵢ / Σn.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.fedavg import WeightedMean
from prime.core.aggregation.optimizers import Yogi


class FedYogi(ComposedStrategy):
    name: ClassVar[str] = "fedyogi"
    streaming: ClassVar[bool] = True

    def __init__(self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3) -> None:
        super().__init__(WeightedMean(), Yogi(eta, beta_1, beta_2, tau))
