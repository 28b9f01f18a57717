"""FedAdagrad (Reddi et al. 2021): FedAvg's weighted mean Δ̄, applied by server Adagrad.

mₜ = β₁mₜ₋₁ + (1−β₁)Δ̄ (β₁ = 0 by default, as Flower: m = Δ̄), vₜ = vₜ₋₁ + Δ̄²,
``new = global + η·mₜ/(√vₜ + τ)``: per-coordinate steps shrink as squares accumulate.

Memory: streaming plus v (and m when β₁ > 0), one float32 tensor per parameter each,
in the server state. Score: nᵢ / Σn.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.fedavg import WeightedMean
from prime.core.aggregation.optimizers import Adagrad


class FedAdagrad(ComposedStrategy):
    name: ClassVar[str] = "fedadagrad"
    streaming: ClassVar[bool] = True

    def __init__(self, eta: float = 0.1, beta_1: float = 0.0, tau: float = 1e-3) -> None:
        super().__init__(WeightedMean(), Adagrad(eta, beta_1, tau))
