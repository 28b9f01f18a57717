"""Held-out metrics every task of a kind reports the same way.

Classification: accuracy and mean cross-entropy. Language models: mean next-token loss,
perplexity, and bits per byte (for byte-level models one token is one byte, so bits per
byte is the loss in nats divided by ln 2). Evaluation runs in fixed-size batches so a
large validation set never materialises all logits at once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prime.core.datasets import Split


def _batches(data: Split, batch_size: int, device: torch.device):
    for start in range(0, len(data), batch_size):
        yield data.x[start:start + batch_size].to(device), data.y[start:start + batch_size].to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_classifier(model: nn.Module, data: Split, batch_size: int = 1024) -> dict[str, float]:
    """{"accuracy", "loss"} of a classifier whose forward returns logits."""
    loss_sum, correct = 0.0, 0
    for x, y in _batches(data, batch_size, _device(model)):
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}


def evaluate_byte_lm(model: nn.Module, data: Split, batch_size: int = 16) -> dict[str, float]:
    """{"bits_per_byte", "loss", "perplexity"} of a byte-level LM whose forward returns logits [B, T, V]."""
    loss_sum, tokens = 0.0, 0
    for x, y in _batches(data, batch_size, _device(model)):
        logits = model(x)
        y = y.long()
        loss_sum += float(nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        tokens += y.numel()
    loss = loss_sum / max(tokens, 1)
    return {"bits_per_byte": loss / math.log(2), "loss": loss, "perplexity": math.exp(min(loss, 50.0))}
