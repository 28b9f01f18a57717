"""Model zoo: every participant builds the same architecture from ``ModelConfig``."""

from __future__ import annotations

import torch
from torch import nn

from prime.core.config import ModelConfig


class MLP(nn.Module):
    """A plain multi-layer perceptron; each ``Linear`` is a natural FSDP2 shard unit."""

    def __init__(self, input_dim: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        dims = [input_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def build_model(config: ModelConfig, seed: int = 0) -> nn.Module:
    """Build the configured model with deterministic initial weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MLP(config.input_dim, config.hidden, config.num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
