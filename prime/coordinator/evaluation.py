"""Held-out evaluation of each committed global model (accuracy and loss)."""

from __future__ import annotations

import torch
from torch import nn

from prime.core.datasets import Split


@torch.no_grad()
def evaluate(model: nn.Module, state: dict[str, torch.Tensor], test: Split) -> tuple[float, float]:
    model.load_state_dict(state)
    model.eval()
    logits = model(test.x)
    loss = float(nn.functional.cross_entropy(logits, test.y))
    accuracy = float((logits.argmax(1) == test.y).float().mean())
    return accuracy, loss
