"""FedAvgM (Hsu et al. 2019): FedAvg's weighted mean, applied with server momentum.

The round's weighted mean Δ̄ feeds heavy-ball SGD exactly as ``torch.optim.SGD`` on the
pseudo-gradient −Δ̄: b₁ = Δ̄₁, bₜ = μ·bₜ₋₁ + Δ̄ₜ, ``new = global + lr·b`` (with
``nesterov``: ``global + lr·(Δ̄ + μ·b)``, DiLoCo's outer step at lr 0.7, μ 0.9).

Memory: streaming like FedAvg (one accumulator per parameter during a round) plus the
momentum buffer (one float32 tensor per parameter) in the server state.
Score: nᵢ / Σn, as FedAvg.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.fedavg import WeightedMean
from prime.core.aggregation.optimizers import SGD


class FedAvgM(ComposedStrategy):
    name: ClassVar[str] = "fedavgm"
    streaming: ClassVar[bool] = True

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.9,
                 nesterov: bool = False) -> None:
        super().__init__(WeightedMean(), SGD(server_learning_rate, server_momentum, nesterov))
