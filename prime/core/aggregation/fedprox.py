"""FedProx (Li et al. 2020): FedAvg on the server; the trainer adds (μ/2)·‖w − wᵗ‖².

The server side is FedAvg exactly (streaming weighted mean, score nᵢ / Σn). The
proximal term is the trainer's: it reads :attr:`FedProx.proximal_mu` (or the config's
``proximal_mu``) and adds it to its local loss.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation.fedavg import FedAvg


class FedProx(FedAvg):
    name: ClassVar[str] = "fedprox"
    streaming: ClassVar[bool] = True

    def __init__(self, proximal_mu: float = 0.01) -> None:
        if proximal_mu < 0:
            raise ValueError("proximal_mu must be non-negative")
        super().__init__()
        self.proximal_mu = proximal_mu
