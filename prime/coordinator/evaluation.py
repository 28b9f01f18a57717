"""Held-out evaluation of each committed global model, through the job's task.

The coordinator alone holds the task's validation set; the metrics (accuracy for
classifiers; loss, perplexity and bits per byte for language models) are committed with
the round and shown by ``status``.
"""

from __future__ import annotations

import torch
from torch import nn

from prime.core.datasets import Split
from prime.tasks.spec import Task


def evaluate(task: Task, model: nn.Module, state: dict[str, torch.Tensor], validation: Split) -> dict[str, float]:
    task.load_exchanged_state(model, state)
    return task.evaluate(model, validation)
